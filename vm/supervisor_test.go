package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/internal/pipeline"
)

// The test binary doubles as a fake VMM and a fake virtiofsd, so the
// supervisor runs, watches and kills real processes.
const envFake = "COCOON_TEST_FAKE" // "vmm", "stubborn-vmm", "chatty-vmm" or "virtiofsd"

func TestMain(m *testing.M) {
	switch os.Getenv(envFake) {
	case "vmm":
		sleepForever() // SIGTERM (the fake's graceful shutdown) ends it
	case "stubborn-vmm":
		signal.Ignore(syscall.SIGTERM)
		sleepForever()
	case "chatty-vmm":
		// A guest can make its VMM print without end (a device it breaks
		// and resets, again and again): 8 MiB of warnings, then wait.
		signal.Ignore(syscall.SIGPIPE)
		line := []byte(strings.Repeat("w", 1023) + "\n")
		for range 8 << 10 {
			_, _ = os.Stderr.Write(line)
		}
		sleepForever()
	case "virtiofsd":
		os.Exit(fakeVirtiofsd(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeVirtiofsd listens on --socket-path until killed; a missing source
// directory makes it fail, as virtiofsd does.
func fakeVirtiofsd(args []string) int {
	var sock, source string
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--socket-path="); ok {
			sock = v
		}
		if v, ok := strings.CutPrefix(a, "source="); ok && i > 0 && args[i-1] == "-o" {
			source = v
		}
	}
	if _, err := os.Stat(source); err != nil {
		fmt.Fprintln(os.Stderr, "fake virtiofsd:", err)
		return 1
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake virtiofsd:", err)
		return 1
	}
	defer l.Close()
	sleepForever()
	return 0
}

// sleepForever blocks without the runtime taking it for a deadlock.
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// fakeHypervisor is a driver's side of a supervised VM: it starts the fake
// VMM and counts what the supervisor asked of it.
type fakeHypervisor struct {
	t         *testing.T
	stubborn  bool  // the VMM ignores the graceful shutdown
	chatty    bool  // the VMM writes 8 MiB to stderr
	readyErr  error // the Ready step fails
	connErr   error // connecting to an adopted VMM fails
	shutdowns int
	conns     int // open control connections
}

func (f *fakeHypervisor) vmmCommand(runDir string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		f.t.Fatal(err)
	}
	// It names its run dir, as every VMM's command line does.
	cmd := exec.Command(exe, "-test.run=^$", "--control="+filepath.Join(runDir, "control.sock"))
	mode := "vmm"
	if f.stubborn {
		mode = "stubborn-vmm"
	}
	if f.chatty {
		mode = "chatty-vmm"
	}
	cmd.Env = append(os.Environ(), envFake+"="+mode)
	return cmd
}

// shutdown is the graceful stop: the fake VMM exits on SIGTERM.
func (f *fakeHypervisor) shutdown(s *Supervisor) func(context.Context) error {
	return func(context.Context) error {
		f.shutdowns++
		return unix.Kill(s.State().Pid, unix.SIGTERM)
	}
}

func (f *fakeHypervisor) connect(context.Context) (func() error, error) {
	if f.connErr != nil {
		return nil, f.connErr
	}
	f.conns++
	return func() error { f.conns--; return nil }, nil
}

// supervisorHarness makes run dirs and fakes, and checks what is left.
type supervisorHarness struct {
	t    *testing.T
	root string
}

func newSupervisorHarness(t *testing.T) *supervisorHarness {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Short: socket paths must fit in sun_path.
	root, err := os.MkdirTemp("", "sup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = KillReferencing("/proc", root)
		os.RemoveAll(root)
	})
	script := filepath.Join(root, "virtiofsd")
	text := fmt.Sprintf("#!/bin/sh\nexport %s=virtiofsd\nexec '%s' \"$@\"\n", envFake, exe)
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	old := VirtiofsdPath
	VirtiofsdPath = script
	t.Cleanup(func() { VirtiofsdPath = old })
	return &supervisorHarness{t: t, root: root}
}

func (h *supervisorHarness) spec(id string) *Spec {
	src := filepath.Join(h.root, "share-"+id)
	if err := os.MkdirAll(src, 0o755); err != nil {
		h.t.Fatal(err)
	}
	return &Spec{ID: id, RunDir: filepath.Join(h.root, "run", id), Shares: []Share{{Tag: "rootfs", Source: src}}}
}

// launch creates a supervised VM of spec with f.
func (h *supervisorHarness) launch(f *fakeHypervisor, spec *Spec) (*Supervisor, error) {
	s := NewSupervisor(State{Driver: "fake", ID: spec.ID, RunDir: spec.RunDir, VCPUs: 1}, "fakevmm", nil, quietLog())
	s.shutdown = f.shutdown(s)
	err := s.Launch(context.Background(), spec, Launch{
		Pipeline: "fake-create",
		Command:  func([]string) (*exec.Cmd, error) { return f.vmmCommand(spec.RunDir), nil },
		Ready: []pipeline.Step{{Name: "ready", Run: func(context.Context) (func() error, error) {
			if f.readyErr != nil {
				return nil, f.readyErr
			}
			return f.connect(context.Background())
		}}},
	})
	return s, err
}

func (h *supervisorHarness) mustLaunch(f *fakeHypervisor, spec *Spec) *Supervisor {
	h.t.Helper()
	s, err := h.launch(f, spec)
	if err != nil {
		h.t.Fatalf("Launch: %v", err)
	}
	h.t.Cleanup(func() { _ = s.Stop(context.Background()) })
	return s
}

// adopt adopts st as a restarted cocoond would, from its record on disk.
func (h *supervisorHarness) adopt(ctx context.Context, f *fakeHypervisor, st *State) (*Supervisor, error) {
	b, _ := json.Marshal(st)
	var rec State
	_ = json.Unmarshal(b, &rec)
	s := NewSupervisor(rec, "fakevmm", nil, quietLog())
	s.shutdown = f.shutdown(s)
	return s, s.Adopt(ctx, f.connect)
}

// assertGone checks that no process of st runs and its run dir is gone.
func (h *supervisorHarness) assertGone(st *State) {
	h.t.Helper()
	for _, p := range append(st.Helpers, Process{Name: "vmm", Pid: st.Pid, StartTime: st.StartTime}) {
		if exited(p) != nil {
			h.t.Errorf("%s (pid %d) still runs", p.Name, p.Pid)
		}
	}
	if _, err := os.Stat(st.RunDir); !errors.Is(err, os.ErrNotExist) {
		h.t.Errorf("run dir %s left (%v)", st.RunDir, err)
	}
}

// exited waits a little for p to be gone (a killed child of another
// watcher may be a zombie for a moment, which counts as gone).
func exited(p Process) error {
	for deadline := time.Now().Add(2 * time.Second); p.Alive(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d) runs", p.Name, p.Pid)
		}
	}
	return nil
}

func waitDone(t *testing.T, s *Supervisor, within time.Duration) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-s.Done():
		return
	default:
	}
	select {
	case <-s.Done():
	case <-timer.C:
		t.Fatalf("Done not closed within %v", within)
	}
}

func TestSupervisorLaunchRecordsAndStopRemovesAll(t *testing.T) {
	for _, tt := range []struct {
		name          string
		stubborn      bool
		wantShutdowns int
	}{
		{name: "the VMM shuts down", wantShutdowns: 1},
		{name: "the VMM ignores the shutdown and is killed", stubborn: true, wantShutdowns: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newSupervisorHarness(t)
			f := &fakeHypervisor{t: t, stubborn: tt.stubborn}
			spec := h.spec("vm")
			s := h.mustLaunch(f, spec)
			st := s.State()
			if st.Pid == 0 || st.StartTime == 0 || len(st.Helpers) != 1 || st.Helpers[0].Name != "virtiofsd-rootfs" {
				t.Fatalf("State() = %+v", st)
			}
			rec, err := LoadState(spec.RunDir, quietLog())
			if err != nil || !reflect.DeepEqual(rec, st) {
				t.Errorf("vm.json = %+v, %v; want %+v", rec, err, st)
			}
			if s.Err() != nil {
				t.Errorf("Err() of a running VM = %v", s.Err())
			}
			if err := s.Stop(context.Background()); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if err := s.Stop(context.Background()); err != nil {
				t.Errorf("second Stop: %v", err)
			}
			waitDone(t, s, 0)
			if !errors.Is(s.Err(), ErrNotRunning) {
				t.Errorf("Err() after Stop = %v", s.Err())
			}
			if f.shutdowns != tt.wantShutdowns || f.conns != 0 {
				t.Errorf("%d graceful shutdowns, %d connections left; want %d, 0", f.shutdowns, f.conns, tt.wantShutdowns)
			}
			h.assertGone(st)
		})
	}
}

// A dead helper ends the VM after HelperGrace, with an error naming it,
// unless the VMM exits by itself within the grace (a guest powering off).
func TestSupervisorEndsTheVMWithItsHelper(t *testing.T) {
	for _, tt := range []struct {
		name        string
		killVMM     bool // the VMM dies
		killHelper  bool // virtiofsd dies
		vmmFollows  bool // the VMM exits within the grace after the helper
		wantErrWith string
	}{
		{name: "the VMM dies", killVMM: true, wantErrWith: "fakevmm exited: signal: killed"},
		{name: "virtiofsd dies", killHelper: true, wantErrWith: "virtiofsd-rootfs (pid"},
		{name: "virtiofsd ends, then the VMM (a guest powering off)", killHelper: true, vmmFollows: true, wantErrWith: "fakevmm exited: signal: terminated"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: the harness swaps the package's VirtiofsdPath.
			h := newSupervisorHarness(t)
			s := h.mustLaunch(&fakeHypervisor{t: t}, h.spec("vm"))
			st := s.State()
			if tt.killHelper {
				_ = unix.Kill(st.Helpers[0].Pid, unix.SIGKILL)
				time.Sleep(HelperGrace / 4)
				if s.Err() != nil {
					t.Fatalf("the VM ended before the grace: %v", s.Err())
				}
			}
			if tt.vmmFollows {
				_ = unix.Kill(st.Pid, unix.SIGTERM)
			}
			if tt.killVMM {
				_ = unix.Kill(st.Pid, unix.SIGKILL)
			}
			waitDone(t, s, HelperGrace+5*time.Second)
			err := s.Err()
			if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), tt.wantErrWith) {
				t.Errorf("Err() = %v, want ErrNotRunning naming %q", err, tt.wantErrWith)
			}
			if err := s.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			h.assertGone(st)
		})
	}
}

// A Launch that fails at any step leaves no process and no run dir; a run
// dir with files in it is refused and kept.
func TestSupervisorLaunchFailureLeavesNothing(t *testing.T) {
	for _, tt := range []struct {
		name    string
		change  func(f *fakeHypervisor, spec *Spec)
		wantErr string
	}{
		{name: "virtiofsd fails", change: func(_ *fakeHypervisor, spec *Spec) { spec.Shares[0].Source = "/nonexistent" },
			wantErr: "virtiofsd: virtiofsd for rootfs exited"},
		{name: "the VMM is not ready", change: func(f *fakeHypervisor, _ *Spec) { f.readyErr = errors.New("no answer") },
			wantErr: "ready: no answer"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newSupervisorHarness(t)
			f := &fakeHypervisor{t: t}
			spec := h.spec("vm")
			tt.change(f, spec)
			s, err := h.launch(f, spec)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Launch = %v, want %q", err, tt.wantErr)
			}
			h.assertGone(s.State())
			if left := ProcessesReferencing("/proc", h.root); len(left) > 0 {
				t.Errorf("processes left: %v", left)
			}
		})
	}
	t.Run("a run dir in use", func(t *testing.T) {
		h := newSupervisorHarness(t)
		spec := h.spec("vm")
		if err := os.MkdirAll(spec.RunDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(spec.RunDir, "theirs"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := h.launch(&fakeHypervisor{t: t}, spec); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("Launch = %v, want a refusal", err)
		}
		if _, err := os.Stat(filepath.Join(spec.RunDir, "theirs")); err != nil {
			t.Errorf("a file we did not write was removed: %v", err)
		}
	})
}

// Adopt takes a VM back whole or removes it: a dead VMM or helper, or a VMM
// that does not answer, means ErrNotRunning and nothing left; a caller that
// gives up leaves the VM as it is.
func TestSupervisorAdopt(t *testing.T) {
	for _, tt := range []struct {
		name       string
		kill       func(st *State) Process // what dies before the adoption
		connErr    error
		cancelled  bool
		wantErr    error // nil: adopted
		wantKept   bool  // the VM is left running
		wantErrMsg string
	}{
		{name: "live VM"},
		{name: "dead VMM", wantErr: ErrNotRunning, wantErrMsg: "fakevmm (pid", kill: func(st *State) Process {
			return Process{Name: "vmm", Pid: st.Pid, StartTime: st.StartTime}
		}},
		{name: "dead virtiofsd", wantErr: ErrNotRunning, wantErrMsg: "helper virtiofsd-rootfs", kill: func(st *State) Process { return st.Helpers[0] }},
		{name: "the VMM does not answer", connErr: errors.New("connection refused"), wantErr: ErrNotRunning, wantErrMsg: "connection refused"},
		{name: "the caller gives up", cancelled: true, connErr: context.Canceled, wantErr: context.Canceled, wantKept: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newSupervisorHarness(t)
			old := h.mustLaunch(&fakeHypervisor{t: t}, h.spec("vm"))
			old.Detach() // the old cocoond is gone: nobody watches
			st := old.State()
			if tt.kill != nil {
				p := tt.kill(st)
				_ = unix.Kill(p.Pid, unix.SIGKILL)
				if err := exited(p); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancelled {
				cancel()
			}
			f := &fakeHypervisor{t: t, connErr: tt.connErr}
			s, err := h.adopt(ctx, f, st)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("Adopt: %v", err)
			case tt.wantErr != nil && (!errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantErrMsg)):
				t.Fatalf("Adopt = %v, want %v naming %q", err, tt.wantErr, tt.wantErrMsg)
			case tt.wantErr != nil && tt.wantKept:
				if errors.Is(err, ErrNotRunning) {
					t.Errorf("a VM the caller gave up on counts as gone: %v", err)
				}
				for _, p := range append(st.Helpers, Process{Pid: st.Pid, StartTime: st.StartTime}) {
					if !p.Alive() {
						t.Errorf("pid %d was stopped", p.Pid)
					}
				}
				if _, err := os.Stat(st.RunDir); err != nil {
					t.Errorf("run dir: %v", err)
				}
				return // the harness's cleanup removes it
			case tt.wantErr != nil:
				h.assertGone(st)
				return
			}
			if got := s.State(); !reflect.DeepEqual(got, st) {
				t.Errorf("adopted State() = %+v, want %+v", got, st)
			}
			if f.conns != 1 {
				t.Errorf("%d control connections, want 1", f.conns)
			}
			if err := s.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if f.shutdowns != 1 || f.conns != 0 {
				t.Errorf("Stop: %d graceful shutdowns, %d connections left; want 1, 0", f.shutdowns, f.conns)
			}
			waitDone(t, s, 0)
			h.assertGone(st)
		})
	}
}

// A recorded pid that another process has taken since (its start time
// differs) is not the VMM: adoption fails and that process lives on.
func TestSupervisorAdoptIgnoresAReusedPid(t *testing.T) {
	h := newSupervisorHarness(t)
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	start, err := StartTime(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(h.root, "run", "gone")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	st := &State{Driver: "fake", ID: "gone", RunDir: runDir, Pid: other.Process.Pid, StartTime: start - 1}
	if _, err := h.adopt(context.Background(), &fakeHypervisor{t: t}, st); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Adopt = %v, want ErrNotRunning", err)
	}
	if !(Process{Pid: other.Process.Pid, StartTime: start}).Alive() {
		t.Error("the process that reused the pid was killed")
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run dir left: %v", err)
	}
}

// An adoption the caller gives up on holds nothing of the VM it leaves
// running: no pidfd or watcher, no copier of a helper's log (which would
// read that FIFO against the next try's copier).
func TestSupervisorAdoptGivenUpHoldsNothing(t *testing.T) {
	h := newSupervisorHarness(t)
	old := h.mustLaunch(&fakeHypervisor{t: t}, h.spec("vm"))
	old.Detach()
	st := old.State()
	fds := func() int {
		e, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(e)
	}
	before := fds()
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := h.adopt(ctx, &fakeHypervisor{t: t, connErr: context.Canceled}, st); !errors.Is(err, context.Canceled) {
			t.Fatalf("Adopt = %v, want context.Canceled", err)
		}
	}
	// Released watchers close their fds as they return.
	for deadline := time.Now().Add(2 * time.Second); fds() != before && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if n := fds() - before; n != 0 {
		t.Errorf("3 adoptions given up left %d fds open", n)
	}
	if ProcessesReferencing("/proc", st.RunDir) == nil {
		t.Error("the VM was stopped")
	}
}

// A record whose run dir is not a VM run dir (relative, or shallow: a damaged
// or hand-edited record) must not make cocoond remove it: KillReferencing
// already refuses such a path, and the removal must too.
func TestRemovalRefusesARunDirThatIsNoRunDir(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.MkdirAll("victim", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("victim", "precious"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st := &State{Driver: "fake", ID: "bad", RunDir: "victim", Pid: 1 << 22, StartTime: 1}
	if err := RemoveDead(st); err == nil {
		t.Error("RemoveDead of a relative run dir succeeded")
	}
	if err := NewSupervisor(*st, "fakevmm", nil, quietLog()).Adopt(context.Background(), nil); err == nil {
		t.Error("Adopt of a relative run dir succeeded")
	}
	if _, err := os.Stat(filepath.Join("victim", "precious")); err != nil {
		t.Errorf("a dir named by a bad record was removed: %v", err)
	}
}

// The VMM's own log is per-pod host storage the guest can fill (a VMM prints
// what a guest's misbehaving devices make it print): it is capped like the
// console and the helpers' logs.
func TestSupervisorCapsTheVMMLog(t *testing.T) {
	h := newSupervisorHarness(t)
	spec := h.spec("vm")
	s := h.mustLaunch(&fakeHypervisor{t: t, chatty: true}, spec)
	time.Sleep(2 * time.Second) // the fake writes 8 MiB
	var total int64
	for _, p := range []string{VMMLog(spec.RunDir, "fakevmm"), VMMLog(spec.RunDir, "fakevmm") + ".1"} {
		if fi, err := os.Stat(p); err == nil {
			total += fi.Size()
		}
	}
	if total == 0 || total > 2*HelperLogMax {
		t.Errorf("the VMM's log holds %d bytes, want 1..%d", total, 2*HelperLogMax)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
