package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/internal/pipeline"
)

const (
	// HelperGrace is how long the VMM may take to exit after a helper
	// (virtiofsd) did before the supervisor kills it. A guest powering off
	// ends virtiofsd's connection a moment before its VMM exits; past the
	// grace the VM has lost its share and counts as broken.
	HelperGrace = 2 * time.Second
	// StopGrace is how long Stop lets the VMM shut down through its control
	// socket before killing it.
	StopGrace = 3 * time.Second
	// helperStopGrace is how long a helper gets to exit on SIGTERM once its
	// VMM is gone (virtiofsd usually has, with its connection).
	helperStopGrace = time.Second
)

// Supervisor is the part of a VM that is the same for every hypervisor: the
// run dir, the VMM process and its helpers (virtiofsd) with their logs and
// the serial console, watching them, Done/Err, Stop with its cleanup, and
// adoption after a restart. A driver embeds it in its VMM and supplies what
// differs: the command line and the control protocol (Launch, Adopt).
type Supervisor struct {
	log *logrus.Entry
	// name is the VMM process's ("qemu", "cloud-hypervisor"): its pipeline
	// step, its log file and its errors carry it.
	name string
	// shutdown asks the VMM to end the VM and exit (QMP quit, CH's
	// vm.shutdown + vmm.shutdown); Stop kills it after StopGrace.
	shutdown func(context.Context) error

	mu       sync.Mutex
	st       State // the record; Pid, StartTime and Helpers come from proc and helpers
	proc     *Watched
	helpers  []*Watched
	stopping bool  // Stop or Detach began: a helper's death is no failure
	failed   error // why the supervisor killed the VMM itself

	console *CappedLog
	vmmLog  *CappedLog // copies the VMM's output into VMMLog, capped
	cleanup *pipeline.Cleanup

	stopMu  sync.Mutex
	stopped bool
}

// NewSupervisor supervises the VM st describes (the driver's part of the
// record: Driver, ID, RunDir, sockets, size), whose VMM process is called
// name and is asked to shut down with shutdown. Launch or Adopt then brings
// it up.
func NewSupervisor(st State, name string, shutdown func(context.Context) error, log *logrus.Entry) *Supervisor {
	return &Supervisor{st: st, name: name, shutdown: shutdown, log: log, cleanup: &pipeline.Cleanup{}}
}

// Launch is what a driver supplies to create a VM.
type Launch struct {
	// Pipeline names the creation ("qemu-create"): the log field and the
	// crash points' prefix.
	Pipeline string
	// Prepare runs once the run dir exists, before anything is recorded or
	// started: files the command line names (the agent token, a socket).
	Prepare []pipeline.Step
	// Command is the VMM's command line; shareSockets[i] is the virtiofsd
	// socket serving spec.Shares[i]. The supervisor sends its output to
	// VMMLog and starts it in its own session.
	Command func(shareSockets []string) (*exec.Cmd, error)
	// Ready runs once the VMM process runs: reach its control socket,
	// create the VM's devices. Done tells a step the VMM has exited.
	Ready []pipeline.Step
}

// VMMLog is the log of the VMM process called name in runDir.
func VMMLog(runDir, name string) string { return filepath.Join(runDir, name+".log") }

// Launch creates the VM: run dir, the driver's preparation, the record,
// the console copier, a virtiofsd per share, the VMM, and the driver's
// steps to make it ready. The record is written before the first process
// starts and again as each starts, so a restart after a crash at any step
// finds what was started (RemoveOrphans). On error nothing is left.
func (s *Supervisor) Launch(ctx context.Context, spec *Spec, l Launch) error {
	var sockets []string
	steps := []pipeline.Step{{Name: "rundir", Run: func(context.Context) (func() error, error) {
		return makeRunDir(spec.RunDir)
	}}}
	steps = append(steps, l.Prepare...)
	steps = append(steps,
		pipeline.Step{Name: "record", Run: func(context.Context) (func() error, error) {
			return nil, SaveState(s.State())
		}},
		pipeline.Step{Name: "console", Run: func(context.Context) (func() error, error) {
			// The VMM opens the FIFO (at start, or CH at vm.create): the reader
			// must be there first.
			c, err := OpenConsole(spec.RunDir, true, s.log)
			if err != nil {
				return nil, err
			}
			s.console = c
			return c.Close, nil
		}},
		pipeline.Step{Name: "virtiofsd", Run: func(ctx context.Context) (func() error, error) {
			for _, sh := range spec.Shares {
				w, sock, err := StartVirtiofsd(ctx, spec.RunDir, sh, s.log)
				if err != nil {
					return s.stopHelpers, err
				}
				s.mu.Lock()
				s.helpers = append(s.helpers, w)
				s.mu.Unlock()
				sockets = append(sockets, sock)
			}
			return s.stopHelpers, SaveState(s.State())
		}},
		pipeline.Step{Name: s.name, Run: func(context.Context) (func() error, error) {
			cmd, err := l.Command(sockets)
			if err != nil {
				return nil, err
			}
			w, err := s.startVMM(spec.RunDir, cmd)
			if err != nil {
				return nil, err
			}
			s.mu.Lock()
			s.proc = w
			s.mu.Unlock()
			s.log.WithField("pid", w.Pid).Debug(s.name + " started")
			return w.Kill, SaveState(s.State())
		}},
	)
	steps = append(steps, l.Ready...)
	c, err := pipeline.Run(pipeline.WithName(ctx, l.Pipeline), s.log, steps)
	if err != nil {
		return fmt.Errorf("%s: create %s: %w", s.st.Driver, s.st.ID, err)
	}
	s.cleanup = c
	s.watchHelpers()
	return nil
}

// startVMM starts cmd logging into VMMLog, from /, so the VMM, which
// outlives cocoond, pins no directory of ours. Its output goes through a
// FIFO into a capped log, as a helper's does: a guest can make its VMM print
// without end, and the run dir is on the host's tmpfs.
func (s *Supervisor) startVMM(runDir string, cmd *exec.Cmd) (*Watched, error) {
	capped, logFile, err := OpenHelperLog(VMMLog(runDir, s.name), s.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	w, err := StartWatched(s.name, cmd)
	if err != nil {
		capped.Close()
		return nil, err
	}
	s.vmmLog = capped
	go func() {
		<-w.Done()
		capped.Close()
	}()
	return w, nil
}

// LogTail is the end of the VMM's own log, up to max bytes, for an error:
// once the VMM has exited, all it wrote is copied first.
func (s *Supervisor) LogTail(max int) string {
	if s.vmmLog != nil && s.proc != nil && s.proc.Exited() {
		s.vmmLog.Close() // drains the FIFO; the copier's own Close is then a no-op
	}
	return FileTail(VMMLog(s.st.RunDir, s.name), max)
}

// stopHelpers ends the helpers (the VMM is gone by then: they follow it).
func (s *Supervisor) stopHelpers() error {
	s.mu.Lock()
	helpers := s.helpers
	s.mu.Unlock()
	var errs []error
	for _, h := range helpers {
		errs = append(errs, h.Terminate(helperStopGrace))
	}
	return errors.Join(errs...)
}

// makeRunDir creates the run dir. One left empty by a crash is taken over;
// a non-empty one is refused so the undo never deletes files we did not write.
func makeRunDir(dir string) (func() error, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o711); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		entries, rerr := os.ReadDir(dir)
		if rerr != nil || len(entries) > 0 {
			return nil, fmt.Errorf("run dir %s already exists and is not empty", dir)
		}
	}
	return func() error { return os.RemoveAll(dir) }, nil
}

// Adopt re-attaches to the VM of the State given to NewSupervisor, which a
// previous cocoond started; connect reaches its VMM's control socket and
// checks its VM still runs, returning what closes the connection.
//
// A VM is adopted whole or not at all. When its VMM or any helper is gone
// (the pid is dead or another process's now, by its start time), or its
// VMM does not answer, what is left of it is killed and removed and the
// error wraps ErrNotRunning: without its share the VM is as broken as a
// running one whose virtiofsd dies, which the supervisor stops too. Only
// when ctx ends first is the VM left as it is, for a later try.
func (s *Supervisor) Adopt(ctx context.Context, connect func(ctx context.Context) (undo func() error, err error)) error {
	s.mu.Lock()
	st := s.st // as recorded: its helpers too
	s.mu.Unlock()
	if st.RunDir == "" || st.Pid == 0 {
		return fmt.Errorf("%s: state of %s lacks a run dir or a pid", st.Driver, st.ID)
	}
	// Stop and abandon remove the run dir: never one a damaged record names.
	if err := checkRunDir(st.RunDir); err != nil {
		return fmt.Errorf("%s: state of %s: %w", st.Driver, st.ID, err)
	}
	proc, err := AdoptWatched(Process{Name: s.name, Pid: st.Pid, StartTime: st.StartTime})
	if err != nil {
		return s.abandon(&st, err)
	}
	var helpers []*Watched
	for _, h := range st.Helpers {
		w, err := AdoptWatched(h)
		if err != nil {
			return s.abandon(&st, fmt.Errorf("helper %w", err))
		}
		helpers = append(helpers, w)
	}
	s.mu.Lock()
	s.proc, s.helpers = proc, helpers
	s.mu.Unlock()
	s.cleanup.Push("rundir", func() error { return os.RemoveAll(st.RunDir) })
	// Read the console before talking to the VMM: one started just before
	// the last cocoond died may still be opening the console FIFO, which
	// blocks it (its control socket included) until a reader is there.
	if c, err := OpenConsole(st.RunDir, false, s.log); err == nil {
		s.console = c
		s.cleanup.Push("console", c.Close)
	} else {
		s.log.WithError(err).Warn("guest console not copied: its output is dropped")
	}
	s.cleanup.Push("virtiofsd", s.stopHelpers)
	s.cleanup.Push(s.name, proc.Kill)
	undo, err := connect(ctx)
	if err != nil {
		if ctx.Err() != nil {
			// Our caller gave up, the VM did not: leave it for the next try,
			// holding nothing of it (no pidfd, no copier: the next try
			// opens its own).
			s.closeConsole()
			proc.Release()
			for _, w := range helpers {
				w.Release()
			}
			return fmt.Errorf("%s: adopt %s: %w", st.Driver, st.ID, err)
		}
		return s.abandon(&st, fmt.Errorf("%s (pid %d): %w", s.name, st.Pid, err))
	}
	s.cleanup.Push("control", undo)
	// Only now that the VM is ours: a copier started before would outlive
	// an adoption the caller gave up on, and read the FIFO against the next.
	for _, w := range helpers {
		AdoptHelperLog(filepath.Join(st.RunDir, w.Name+".log"), w.Done(), s.log)
	}
	// A VMM started by a cocoond before the log was capped writes into the
	// file itself: there is no FIFO to read then, only a warning.
	AdoptHelperLog(VMMLog(st.RunDir, s.name), proc.Done(), s.log)
	s.watchHelpers()
	s.log.WithField("pid", st.Pid).Info("adopted VM")
	return nil
}

// abandon removes what is left of a VM that cannot be adopted.
func (s *Supervisor) abandon(st *State, why error) error {
	s.log.WithError(why).Warn("VM cannot be adopted, removing what is left of it")
	s.closeConsole()
	err := fmt.Errorf("%s: adopt %s: %w", st.Driver, st.ID, why)
	if !errors.Is(why, ErrNotRunning) {
		err = fmt.Errorf("%w: %w", err, ErrNotRunning)
	}
	return errors.Join(err, RemoveDead(st))
}

func (s *Supervisor) closeConsole() {
	if s.console != nil {
		s.console.Close()
	}
}

// watchHelpers kills the VMM when a helper dies under a running VM: its
// share is gone for good. Done then closes and Err names the helper.
func (s *Supervisor) watchHelpers() {
	for _, h := range s.helpers {
		go func() {
			select {
			case <-s.proc.Done():
				return
			case <-h.Done():
			}
			grace := time.NewTimer(HelperGrace)
			defer grace.Stop()
			select {
			case <-s.proc.Done():
				return // a shutdown: the VMM's own exit says why
			case <-grace.C:
			}
			s.mu.Lock()
			if s.stopping {
				s.mu.Unlock()
				return
			}
			if s.failed == nil {
				s.failed = fmt.Errorf("%s (pid %d) died (%v): VM stopped", h.Name, h.Pid, h.Err())
			}
			failed := s.failed
			s.mu.Unlock()
			s.log.WithError(failed).Error("VM helper died, killing " + s.name)
			_ = s.proc.Kill()
		}()
	}
}

// Done implements VMM: closed when the VMM process has exited.
func (s *Supervisor) Done() <-chan struct{} { return s.proc.Done() }

// Err implements VMM: nil while the VMM runs, then why it ended, wrapping
// ErrNotRunning.
func (s *Supervisor) Err() error {
	if !s.proc.Exited() {
		return nil
	}
	s.mu.Lock()
	why := s.failed
	s.mu.Unlock()
	switch {
	case why != nil:
	case s.proc.Err() == nil:
		why = fmt.Errorf("%s exited", s.name)
	case s.proc.cmd != nil: // our child: Wait's error is the exit status
		why = fmt.Errorf("%s exited: %w", s.name, s.proc.Err())
	default: // adopted: the error names the process
		why = s.proc.Err()
	}
	return fmt.Errorf("%w: %w", ErrNotRunning, why)
}

// Stop implements VMM: the driver's graceful shutdown, up to StopGrace for
// the VMM to exit, then SIGKILL, helpers stopped, console closed, run dir
// removed. The teardown runs even when ctx has ended (that only skips the
// graceful part). Stopping a stopped VM is fine.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	if s.stopped {
		return nil
	}
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	if !s.proc.Exited() && ctx.Err() == nil && s.shutdown != nil {
		gctx, cancel := context.WithTimeout(ctx, StopGrace)
		// It may fail (a VM never booted has nothing to shut down); the
		// kill below is what guarantees the outcome.
		if err := s.shutdown(gctx); err != nil {
			s.log.WithError(err).Debug("graceful shutdown failed")
		}
		select {
		case <-s.proc.Done():
		case <-gctx.Done():
			s.log.Warn(s.name + " did not exit in time, killing it")
		}
		cancel()
	}
	err := s.cleanup.Unwind(s.log)
	s.stopped = true
	if err != nil {
		return fmt.Errorf("%s: stop %s: %w", s.st.Driver, s.st.ID, err)
	}
	return nil
}

// Detach leaves the VM running unwatched, its console unread: what a
// cocoond that exits leaves for the next one to Adopt. Tests that restart
// cocoond inside one process use it (with the driver's control connection
// closed).
func (s *Supervisor) Detach() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.closeConsole()
}

// State implements VMM.
func (s *Supervisor) State() *State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Helpers = nil
	if s.proc != nil { // nil until Launch has started the VMM
		st.Pid, st.StartTime = s.proc.Pid, s.proc.StartTime
	}
	for _, h := range s.helpers {
		st.Helpers = append(st.Helpers, h.Process)
	}
	return &st
}

// UpdateState changes the driver's part of the record (the size after a
// resize) under the supervisor's lock.
func (s *Supervisor) UpdateState(fn func(st *State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.st)
}
