package qemu

import (
	"context"
	"path/filepath"
	"testing"

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
