package vm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestLoadStatesMovesBadRecordsAside(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(path string) error
	}{
		{"truncated JSON", func(p string) error { return os.WriteFile(p, []byte(`{"version":1,"driver":"qe`), 0o600) }},
		{"empty file", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
		{"wrong version", func(p string) error { return os.WriteFile(p, []byte(`{"version":99,"id":"x"}`), 0o600) }},
		{"directory in place of a file", func(p string) error { return os.Mkdir(p, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			good := &State{Driver: "qemu", ID: "good", RunDir: filepath.Join(root, "good")}
			if err := os.Mkdir(good.RunDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := SaveState(good); err != nil {
				t.Fatal(err)
			}
			bad := filepath.Join(root, "bad", StateFile)
			if err := os.Mkdir(filepath.Dir(bad), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := tc.setup(bad); err != nil {
				t.Fatal(err)
			}
			states, err := LoadStates(root, quietLog())
			if err != nil {
				t.Fatalf("LoadStates stopped at a bad record: %v", err)
			}
			if len(states) != 1 || states[0].ID != "good" {
				t.Fatalf("loaded %+v", states)
			}
			if moved, _ := filepath.Glob(bad + ".bad-*"); len(moved) != 1 {
				t.Fatalf("bad record not moved aside: %v", moved)
			}
		})
	}
}

func TestSaveStateIsVersionedAndReadBack(t *testing.T) {
	dir := t.TempDir()
	st := &State{Driver: "qemu", ID: "x", RunDir: dir, Pid: 42, Helpers: []Process{{Name: "virtiofsd", Pid: 43}}}
	if err := SaveState(st); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(dir, quietLog())
	if err != nil || got.Pid != 42 || len(got.Helpers) != 1 || got.ID != "x" {
		t.Fatalf("read back %+v, %v", got, err)
	}
	if _, err := LoadState(t.TempDir(), quietLog()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing record: %v", err)
	}
}

// TestRemoveOrphansReclaimsHalfWrittenVM: a crash between starting a VM's
// process and recording its pid leaves a run dir whose record lacks the
// process (or has no record at all); the process names the run dir on its
// command line and is killed, and the run dir removed.
func TestRemoveOrphansReclaimsHalfWrittenVM(t *testing.T) {
	for _, tc := range []struct {
		name   string
		record func(runDir string) error
	}{
		{"record without the pid", func(d string) error { return SaveState(&State{Driver: "qemu", ID: "half", RunDir: d}) }},
		{"no record at all", func(string) error { return nil }},
		{"truncated record", func(d string) error { return os.WriteFile(filepath.Join(d, StateFile), []byte(`{"dri`), 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			runDir := filepath.Join(root, "half")
			kept := filepath.Join(root, "kept")
			for _, d := range []string{runDir, kept} {
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.record(runDir); err != nil {
				t.Fatal(err)
			}
			// Stand-ins for virtiofsd and the VMM: they name the run dir
			// the way the real ones do.
			// sh waits on a pipe that never closes, keeping its arguments
			// (an exec would replace them).
			hold, stdin, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer stdin.Close()
			defer hold.Close()
			orphan := exec.Command("/bin/sh", "-c", "read x", "sh", "--socket-path="+filepath.Join(runDir, "virtiofs.sock"))
			survivor := exec.Command("/bin/sh", "-c", "read x", "sh", "unix:"+filepath.Join(kept, "qmp.sock")+",server=on")
			for _, c := range []*exec.Cmd{orphan, survivor} {
				c.Stdin = hold
				if err := c.Start(); err != nil {
					t.Fatal(err)
				}
				defer c.Process.Kill()
			}
			exited := make(chan struct{})
			go func() { _ = orphan.Wait(); close(exited) }()
			time.Sleep(50 * time.Millisecond)
			removed, err := RemoveOrphans(context.Background(), root, nil, func(st *State) bool { return st.RunDir == kept }, quietLog())
			if err != nil || len(removed) != 1 {
				t.Fatalf("removed %v, %v", removed, err)
			}
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				t.Fatal("the orphan's process survived")
			}
			if survivor.Process.Signal(syscall.Signal(0)) != nil {
				t.Fatal("a claimed VM's process was killed")
			}
			if _, err := os.Stat(runDir); !os.IsNotExist(err) {
				t.Fatal("orphan run dir left")
			}
		})
	}
}

func TestMentions(t *testing.T) {
	for _, tt := range []struct {
		cmdline string
		want    bool
	}{
		{"virtiofsd\x00--socket-path=/run/vm/ab/virtiofs.sock", true},
		{"qemu\x00-qmp\x00unix:/run/vm/ab/qmp.sock,server=on", true},
		{"qemu\x00-chardev\x00socket,id=a,path=/run/vm/ab/agent.sock", true},
		{"x\x00/run/vm/ab", true},
		{"x\x00/run/vm/abc/qmp.sock", false},
		{"x\x00/other/run/vm/ab/qmp.sock", false},
	} {
		if got := mentions(tt.cmdline, "/run/vm/ab"); got != tt.want {
			t.Errorf("mentions(%q) = %v", tt.cmdline, got)
		}
	}
}

func TestKillReferencingRefusesShallowDirs(t *testing.T) {
	for _, dir := range []string{"/", "", "run/vm/x", "/run"} {
		if err := KillReferencing("/proc", dir); err == nil {
			t.Errorf("KillReferencing(%q) went ahead", dir)
		}
	}
}
