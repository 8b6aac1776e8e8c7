package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// TestQEMURecordsBeforeEachProcess: at each point of Create where a crash
// could strike, vm.json already names every process started so far, and it
// exists before the first one starts.
func TestQEMURecordsBeforeEachProcess(t *testing.T) {
	m := testGuest(t)
	for _, tt := range []struct {
		point       string
		wantHelpers int
		wantPid     bool
	}{
		{"qemu-create/record", 0, false},
		{"qemu-create/virtiofsd", 1, false},
		{"qemu-create/qemu", 1, true},
	} {
		t.Run(tt.point, func(t *testing.T) {
			spec := testSpec(t, m, "rec")
			var seen *vm.State
			var readErr error
			var liveAtPoint int
			restore := pipeline.SetCrashAction(func() {
				seen, readErr = vm.LoadState(spec.RunDir, quietDriver().opts.Log)
				liveAtPoint = len(processesNaming(spec.RunDir))
			})
			defer restore()
			pipeline.SetCrashPoint(tt.point)
			defer pipeline.SetCrashPoint("")
			v, err := quietDriver().Create(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Stop(context.Background())
			if readErr != nil || seen == nil {
				t.Fatalf("no readable vm.json at %s: %v", tt.point, readErr)
			}
			if len(seen.Helpers) != tt.wantHelpers || (seen.Pid != 0) != tt.wantPid {
				t.Errorf("vm.json at %s: %d helpers, pid %d; want %d helpers, pid recorded %v", tt.point, len(seen.Helpers), seen.Pid, tt.wantHelpers, tt.wantPid)
			}
			if recorded := len(seen.Helpers) + map[bool]int{true: 1}[seen.Pid != 0]; liveAtPoint > recorded {
				t.Errorf("at %s %d processes ran but vm.json named %d", tt.point, liveAtPoint, recorded)
			}
		})
	}
}

// processesNaming lists processes whose command line names a path in dir.
func processesNaming(dir string) []vm.Process {
	return vm.ProcessesReferencing("/proc", filepath.Clean(dir))
}

// TestAdoptWithoutItsHelperRemovesTheVM: a VM whose virtiofsd is gone has
// lost its share; adopting it stops and removes it (vm.Supervisor.Adopt),
// as the supervisor stops a running VM whose virtiofsd dies.
func TestAdoptWithoutItsHelperRemovesTheVM(t *testing.T) {
	runDir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stand := exec.Command("sleep", "60") // stands in for QEMU
	if err := stand.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = stand.Wait(); close(exited) }()
	defer func() { _ = stand.Process.Kill(); <-exited }()
	start, err := vm.StartTime(stand.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	gone := exec.Command("true")
	if err := gone.Start(); err != nil {
		t.Fatal(err)
	}
	goneStart, _ := vm.StartTime(gone.Process.Pid)
	_ = gone.Wait()

	st := &vm.State{Driver: "qemu", ID: "nohelper", RunDir: runDir, Pid: stand.Process.Pid, StartTime: start,
		ControlSocket: filepath.Join(runDir, "qmp.sock"), AgentSocket: filepath.Join(runDir, "agent.sock"),
		Helpers: []vm.Process{{Name: "virtiofsd-share", Pid: gone.Process.Pid, StartTime: goneStart}}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := quietDriver().Adopt(ctx, st)
	if !errors.Is(err, vm.ErrNotRunning) || v != nil || !strings.Contains(err.Error(), "virtiofsd-share") {
		t.Fatalf("Adopt = %v, %v; want ErrNotRunning naming virtiofsd", v, err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("QEMU of a VM without its virtiofsd still runs")
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run dir left: %v", err)
	}
}
