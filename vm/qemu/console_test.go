package qemu

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

// TestSerialToConsolePipe: QEMU writes the serial console into the FIFO
// cocoond copies with a cap, never into a file of its own.
func TestSerialToConsolePipe(t *testing.T) {
	args := commandLine(&vm.Spec{ID: "x", RunDir: "/run/x", VCPUs: 1, MemoryMiB: 128}, "tcg", nil, 0, "", false)
	i := slices.Index(args, "-serial")
	if i < 0 || args[i+1] != "file:/run/x/console.pipe" {
		t.Fatalf("serial %v, want file:/run/x/console.pipe", args[i:i+2])
	}
	for _, a := range args {
		if strings.Contains(a, "console.log") {
			t.Fatalf("QEMU writes console.log itself: %q", a)
		}
	}
}

// consoleBytes is what the VM's console logs hold on the host.
func consoleBytes(runDir string) (cur, old int64) {
	if st, err := os.Stat(vm.ConsoleLog(runDir)); err == nil {
		cur = st.Size()
	}
	if st, err := os.Stat(vm.ConsoleLog(runDir) + ".1"); err == nil {
		old = st.Size()
	}
	return cur, old
}

// TestQEMUConsoleCapped: a guest root process flooding the serial console
// leaves at most two capped logs on the host, before and after a cocoond
// restart (adopt), and the boot's console output is there to read.
func TestQEMUConsoleCapped(t *testing.T) {
	m := testGuest(t)
	ctx := context.Background()
	spec := testSpec(t, m, "console")
	// The flood runs as guest root, which the agent allows only on a VM
	// booted with the debug console.
	d := quietDriver()
	d.opts.DebugConsole = true
	v, err := d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(ctx)
	var st unix.Stat_t
	if err := unix.Stat(vm.ConsolePipe(spec.RunDir), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Fatalf("console.pipe is not a FIFO: %v", err)
	}
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	client, a := agentClient(t, v)
	if cur, _ := consoleBytes(spec.RunDir); cur == 0 {
		t.Fatal("the boot wrote nothing to console.log")
	}
	line := strings.Repeat("x", 1000)
	flood := func(a agentapi.AgentClient, id string, d time.Duration) {
		t.Helper()
		proc, _ := json.Marshal(&specs.Process{Args: []string{"/bin/sh", "-c", "while :; do echo " + line + "; done > /dev/ttyS0"}, Cwd: "/", Env: []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin"}})
		if _, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: id, Process: proc, GuestRoot: true}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(d)
		if _, err := a.SignalProcess(ctx, &agentapi.SignalProcessRequest{ExecId: id, Signal: uint32(unix.SIGKILL)}); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := a.WaitProcess(wctx, &agentapi.ProcessRequest{ExecId: id}); err != nil {
			t.Fatal(err)
		}
	}
	// Flood until the log rotated at least once.
	deadline := time.Now().Add(3 * time.Minute)
	for n := 0; ; n++ {
		flood(a, "flood"+string(rune('a'+n)), 10*time.Second)
		cur, old := consoleBytes(spec.RunDir)
		if cur+old > 2*vm.ConsoleLogMax {
			t.Fatalf("console logs hold %d + %d bytes, want at most %d", cur, old, 2*vm.ConsoleLogMax)
		}
		if old > 0 {
			t.Logf("rotated: console.log %d bytes, console.log.1 %d bytes", cur, old)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rotation after 3 minutes of flooding (%d bytes)", cur)
		}
	}

	// cocoond restarts: the new one copies the same console, still capped.
	client.Close()
	state := v.State()
	v.(*qemuVM).qmp.Close()
	v.(*qemuVM).Detach() // the old cocoond's console copier dies with it
	adopted, err := quietDriver().Adopt(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	defer adopted.Stop(ctx)
	c2, a2 := agentClient(t, adopted)
	defer c2.Close()
	before, _ := os.ReadFile(vm.ConsoleLog(spec.RunDir))
	flood(a2, "after", 5*time.Second)
	after, _ := os.ReadFile(vm.ConsoleLog(spec.RunDir))
	cur, old := consoleBytes(spec.RunDir)
	if string(after) == string(before) || cur+old > 2*vm.ConsoleLogMax {
		t.Fatalf("after adopt: console.log changed %v, logs hold %d + %d bytes", string(after) != string(before), cur, old)
	}
	if _, err := os.Stat(filepath.Join(spec.RunDir, "console.log.2")); err == nil {
		t.Fatal("more than one rotated log kept")
	}
}
