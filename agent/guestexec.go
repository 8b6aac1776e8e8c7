package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// defaultGuestPath is searched when the process's env names no PATH.
const defaultGuestPath = "/bin:/sbin:/usr/bin:/usr/sbin"

// execGuest runs a process in the guest's own root environment, outside
// every container: the operator's debug console. The host decides whether
// that is allowed; the agent trusts its one host as it does for containers.
func (e *engine) execGuest(req *agentapi.ExecProcessRequest) error {
	if req.GetContainerId() != "" {
		return status.Errorf(codes.InvalidArgument, "a guest_root exec takes no container id, got %q", req.GetContainerId())
	}
	if req.GetExecId() == "" {
		return status.Error(codes.InvalidArgument, "exec id is empty")
	}
	var sp specs.Process
	if err := json.Unmarshal(req.GetProcess(), &sp); err != nil {
		return status.Errorf(codes.InvalidArgument, "process: %v", err)
	}
	if len(sp.Args) == 0 {
		return status.Error(codes.InvalidArgument, "process has no args")
	}
	cmd, err := guestCommandFor(&sp)
	if err != nil {
		return err
	}
	p, err := newGuestProcess(cmd, sp.ConsoleSize, req.GetTty(), req.GetStdin())
	if err != nil {
		return status.Errorf(codes.Internal, "stdio: %v", err)
	}
	return e.guest.start(req.GetExecId(), p, cmd.Start)
}

// guestProcess finds a guest-root exec.
func (e *engine) guestProcess(execID string) (*process, error) {
	p, ok := e.guest.get(execID)
	if !ok {
		return nil, notFound("guest exec", execID)
	}
	return p, nil
}

// guestCommandFor builds the command for sp: its program found on the PATH of
// its own env, its cwd, user and groups, in a session of its own so the whole
// job can be signalled and a terminal can become its controlling one.
func guestCommandFor(sp *specs.Process) (*exec.Cmd, error) {
	path, err := lookGuestPath(sp.Args[0], sp.Env)
	if err != nil {
		return nil, err
	}
	cwd := sp.Cwd
	if cwd == "" {
		cwd = "/"
	}
	groups := make([]uint32, len(sp.User.AdditionalGids))
	copy(groups, sp.User.AdditionalGids)
	cmd := &exec.Cmd{Path: path, Args: sp.Args, Env: sp.Env, Dir: cwd}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Credential: &syscall.Credential{Uid: sp.User.UID, Gid: sp.User.GID, Groups: groups},
	}
	return cmd, nil
}

// lookGuestPath resolves name like a shell would, with the PATH of env.
func lookGuestPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", missingProgram(name, err)
		}
		return name, nil
	}
	search := defaultGuestPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			search = v
		}
	}
	for _, dir := range filepath.SplitList(search) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", missingProgram(name, fmt.Errorf("not found in PATH %s", search))
}

// missingProgram is what an old guest (an initramfs without busybox) answers.
func missingProgram(name string, err error) error {
	return status.Errorf(codes.FailedPrecondition, "%s: %v: the guest has no such program (rebuild it with `cocoon guest build`)", name, err)
}

// guestCommand is an os/exec process seen as a runner.
type guestCommand struct{ cmd *exec.Cmd }

func (g guestCommand) Wait() (*os.ProcessState, error) {
	err := g.cmd.Wait()
	return g.cmd.ProcessState, err
}

// Signal signals the process's whole session: it leads it, and what a shell
// started must not outlive a kill.
func (g guestCommand) Signal(sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return g.cmd.Process.Signal(sig)
	}
	if err := unix.Kill(-g.cmd.Process.Pid, s); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

func (g guestCommand) Pid() (int, error) { return g.cmd.Process.Pid, nil }

// newGuestProcess wires cmd's stdio: a new pseudo-terminal when tty, else pipes.
func newGuestProcess(cmd *exec.Cmd, size *specs.Box, tty, withStdin bool) (*process, error) {
	p := &process{run: guestCommand{cmd}, done: make(chan struct{})}
	if !tty {
		if err := p.pipeStdio(withStdin, &cmd.Stdin, &cmd.Stdout, &cmd.Stderr); err != nil {
			return nil, err
		}
		return p, nil
	}
	master, slave, err := openPty()
	if err != nil {
		return nil, err
	}
	pty := ptyMaster{master}
	if size != nil {
		if err := pty.Resize(console.WinSize{Height: uint16(size.Height), Width: uint16(size.Width)}); err != nil {
			master.Close()
			slave.Close()
			return nil, err
		}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr.Setctty = true // Ctty 0: the child's stdin, the terminal
	p.childEnds = []*os.File{slave}
	p.tty, p.stdin, p.stdout = pty, pty, master
	return p, nil
}

// openPty opens a pseudo-terminal pair. The master is only ever touched
// through SyscallConn, never Fd(), so it stays in Go's poller and reads
// honour the deadlines ReadOutput sets.
func openPty() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	var n int
	err = control(master, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			return fmt.Errorf("unlock pty: %w", err)
		}
		n, err = unix.IoctlGetInt(fd, unix.TIOCGPTN)
		return err
	})
	if err == nil {
		slave, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	}
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

// ptyMaster is the agent's end of a guest process's terminal.
type ptyMaster struct{ f *os.File }

func (m ptyMaster) Write(b []byte) (int, error) { return m.f.Write(b) }

func (m ptyMaster) Close() error { return m.f.Close() }

func (m ptyMaster) Resize(ws console.WinSize) error {
	return control(m.f, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Height, Col: ws.Width})
	})
}

// control runs fn on f's descriptor without taking it out of the poller.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
