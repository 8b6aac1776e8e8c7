package vm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// StartTime reads a process's start time (clock ticks since boot) from
// /proc/<pid>/stat; with the pid it names one process even across pid reuse.
func StartTime(pid int) (uint64, error) {
	st, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return st.Starttime, nil
}

// procStat parses /proc/<pid>/stat.
func procStat(pid int) (procfs.ProcStat, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStat{}, err
	}
	st, err := p.Stat()
	if err != nil {
		return procfs.ProcStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return st, nil
}

// Alive reports whether p is still the process it was when recorded.
func (p Process) Alive() bool {
	st, err := procStat(p.Pid)
	// A zombie is dead for our purposes.
	return err == nil && st.Starttime == p.StartTime && st.State != "Z"
}

// Signal sends sig to p and never to a later process that got its pid: the
// signal goes through a fresh pidfd, opened and then checked against the
// recorded start time. A process that is gone is not an error.
func (p Process) Signal(sig unix.Signal) {
	fd, err := unix.PidfdOpen(p.Pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	if !p.Alive() {
		return
	}
	_ = unix.PidfdSendSignal(fd, sig, nil, 0)
}

// Watched is a process whose exit we learn about: a child we started (reaped
// through exec.Cmd) or an adopted one (watched through a pidfd).
type Watched struct {
	Process
	done chan struct{}
	err  error
	cmd  *exec.Cmd
	// release ends the watch of an adopted process (Release); nil for a
	// child.
	release *os.File
}

// StartWatched starts cmd in its own session, so it outlives cocoond, and
// watches it.
func StartWatched(name string, cmd *exec.Cmd) (*Watched, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	st, err := StartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	if err := dropOOMProtection(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	w := &Watched{Process: Process{Name: name, Pid: cmd.Process.Pid, StartTime: st}, done: make(chan struct{}), cmd: cmd}
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	return w, nil
}

// dropOOMProtection gives a VM process the kernel's default OOM score
// adjustment. cocoond itself runs protected (the systemd unit's
// OOMScoreAdjust=-999) and children inherit that; a pod VM holding guest
// memory must not outrank the host's other workloads for survival.
func dropOOMProtection(pid int) error {
	path := fmt.Sprintf("/proc/%d/oom_score_adj", pid)
	cur, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if v, err := strconv.Atoi(strings.TrimSpace(string(cur))); err != nil || v >= 0 {
		return err
	}
	// Raising the value needs no privilege; lowering it does.
	return os.WriteFile(path, []byte("0"), 0)
}

// AdoptWatched watches a process another cocoond started.
func AdoptWatched(p Process) (*Watched, error) {
	if !p.Alive() {
		return nil, fmt.Errorf("%s (pid %d): %w", p.Name, p.Pid, ErrNotRunning)
	}
	fd, err := unix.PidfdOpen(p.Pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd of %s: %w", p.Name, err)
	}
	if !p.Alive() { // the pid could have been reused between the check and the open
		unix.Close(fd)
		return nil, fmt.Errorf("%s (pid %d): %w", p.Name, p.Pid, ErrNotRunning)
	}
	stopR, stopW, err := os.Pipe()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	w := &Watched{Process: p, done: make(chan struct{}), release: stopW}
	go func() {
		defer unix.Close(fd)
		defer stopR.Close()
		defer stopW.Close()
		stop := int32(stopR.Fd())
		for {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: stop, Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
				w.err = err
				break
			}
			if fds[0].Revents != 0 {
				break
			}
			if fds[1].Revents != 0 {
				return // released: the process runs on, unwatched; Done stays open
			}
		}
		if w.err == nil {
			w.err = fmt.Errorf("%s (pid %d) exited", p.Name, p.Pid)
		}
		close(w.done)
	}()
	return w, nil
}

// Release stops watching an adopted process without touching it: its pidfd
// and watcher go, and Done never closes. A no-op for a child we started.
func (w *Watched) Release() {
	if w.release != nil {
		_, _ = w.release.Write([]byte{0}) // fails harmlessly once the watch ended
	}
}

// Done is closed when the process has exited.
func (w *Watched) Done() <-chan struct{} { return w.done }

// Err says how the process ended (valid after Done).
func (w *Watched) Err() error { return w.err }

// Exited reports whether the process has ended.
func (w *Watched) Exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// signal sends sig to this very process: a child we started keeps its pid
// until we reap it, and an adopted one goes through Process.Signal.
func (w *Watched) signal(sig unix.Signal) {
	if w.cmd != nil {
		_ = w.cmd.Process.Signal(sig)
		return
	}
	w.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to go.
func (w *Watched) Kill() error { return w.Terminate(0) }

// Terminate sends SIGTERM, waits up to grace, then SIGKILLs and waits. With
// no grace it goes straight to SIGKILL.
func (w *Watched) Terminate(grace time.Duration) error {
	if w.Exited() {
		return nil
	}
	if grace > 0 {
		w.signal(unix.SIGTERM)
		select {
		case <-w.done:
			return nil
		case <-time.After(grace):
		}
	}
	w.signal(unix.SIGKILL)
	select {
	case <-w.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", w.Name, w.Pid)
	}
}
