package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/guest"
	"github.com/cocoon-runtime/cocoon/vm/qemu"
)

// TestAgentRefusesGuestRootWithoutDebugConsole boots a real VM the way a
// cocoond with [debug] console = false does and asks its agent directly, past
// cocoond's own check, for a guest-root shell: the agent itself refuses.
func TestAgentRefusesGuestRootWithoutDebugConsole(t *testing.T) {
	m, err := guest.Locate(guestDir(t))
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	driver := qemu.New(qemu.Options{Log: logrus.NewEntry(log), DebugConsole: false})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := driver.Create(ctx, &vm.Spec{
		ID: "nodebug", RunDir: filepath.Join(t.TempDir(), "run"),
		Kernel: m.KernelPath(), Initramfs: m.InitramfsPath(),
		VCPUs: 1, MemoryMiB: 256, Accel: "tcg",
		Shares: []vm.Share{{Tag: "share", Source: t.TempDir()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(context.Background())
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	client, err := agentclient.Wait(ctx, v.DialAgent)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	proc, _ := json.Marshal(&specs.Process{Args: []string{"/bin/sh", "-c", "echo pwned"}, Cwd: "/"})
	_, err = agentapi.NewAgentClient(client).ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "root-shell", GuestRoot: true, Process: proc})
	if agentclient.GuestCode(err) != codes.PermissionDenied {
		t.Fatalf("guest-root exec in a VM booted without the debug console: %v, want PermissionDenied", err)
	}
}
