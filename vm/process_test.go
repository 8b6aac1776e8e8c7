package vm

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDropOOMProtection(t *testing.T) {
	for _, tc := range []struct {
		name, set, want string
	}{
		{"protected like cocoond", "-500", "0"},
		{"left alone when not protected", "300", "300"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("sleep", "30")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			path := fmt.Sprintf("/proc/%d/oom_score_adj", cmd.Process.Pid)
			if err := os.WriteFile(path, []byte(tc.set), 0); err != nil {
				t.Skipf("cannot set oom_score_adj %s on a child here: %v", tc.set, err)
			}
			if err := dropOOMProtection(cmd.Process.Pid); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(got)) != tc.want {
				t.Errorf("oom_score_adj = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestFileTail(t *testing.T) {
	p := t.TempDir() + "/log"
	if got := FileTail(p, 10); got != "" {
		t.Errorf("missing file: %q", got)
	}
	if err := os.WriteFile(p, []byte("early boot\nKernel panic - not syncing\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := FileTail(p, 100); got != "early boot\nKernel panic - not syncing" {
		t.Errorf("short file: %q", got)
	}
	if got := FileTail(p, 12); got != "… not syncing" {
		t.Errorf("tail: %q", got)
	}
}

// TestSignalSparesAProcessThatReusedThePid signals a record whose start time
// is not the live process's, as after the recorded process died and its pid
// went to another: the live one must not be touched.
func TestSignalSparesAProcessThatReusedThePid(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	st, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	stale := Process{Name: "stale", Pid: cmd.Process.Pid, StartTime: st + 1}
	adopted := &Watched{Process: stale, done: make(chan struct{})}
	for name, send := range map[string]func(){
		"Process.Signal":    func() { stale.Signal(unix.SIGKILL) },
		"Watched.Terminate": func() { _ = adopted.Terminate(0) },
	} {
		send()
		live := Process{Pid: cmd.Process.Pid, StartTime: st}
		if !live.Alive() {
			t.Fatalf("%s killed the process that reused the pid", name)
		}
	}
	// The right record does reach it.
	Process{Name: "sleep", Pid: cmd.Process.Pid, StartTime: st}.Signal(unix.SIGKILL)
	if err := cmd.Wait(); err == nil {
		t.Fatal("sleep was not killed through its own record")
	}
}
