package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodFromTemplate runs pods of a handler whose snapshot template is on:
// the first boots cold and starts the template's build, the later ones are
// restored from it and run containers. It prints RunPodSandbox's times.
func TestPodFromTemplate(t *testing.T) {
	shared := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	d, err := startDaemon(shared.bin, t.TempDir(), "[runtime.handlers.cocoon.template]\nenabled = true\n")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.shutdown(); err != nil {
			t.Error(err)
		}
		if left := processesUnder(filepath.Join(d.dir, "lib", "templates")); len(left) > 0 {
			t.Errorf("template processes left: %v", left)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	imageRef := pull(t, d, busybox)

	// runPod runs pod n and says how long RunPodSandbox took and whether
	// its VM was restored (QEMU waiting for a migration stream).
	runPod := func(n int) (string, *runtimeapi.PodSandboxConfig, time.Duration, bool) {
		t.Helper()
		cfg := &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: fmt.Sprintf("tpl-%d", n), Namespace: "default", Uid: fmt.Sprintf("tpl-uid-%d", n)},
			Hostname: fmt.Sprintf("tpl-host-%d", n), LogDirectory: t.TempDir(),
		}
		start := time.Now()
		run, err := d.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			t.Fatalf("RunPodSandbox %d: %v", n, err)
		}
		took := time.Since(start)
		vmDir := filepath.Join(d.dir, "run", "vm", run.PodSandboxId[:16])
		restored := len(liveProcesses(func(_, cmdline string) bool {
			return strings.Contains(cmdline, vmDir) && strings.Contains(cmdline, "-incoming\x00defer")
		})) > 0
		return run.PodSandboxId, cfg, took, restored
	}
	remove := func(id string) {
		t.Helper()
		if _, err := d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}

	id, _, cold, restored := runPod(0)
	remove(id)
	if restored {
		t.Fatal("the first pod was restored: there was no template to restore from")
	}
	meta := filepath.Join(d.dir, "lib", "templates", "cocoon", "template.json")
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := os.Stat(meta); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no template built 3 minutes after the first pod")
		}
	}

	var times []time.Duration
	for n := 1; n <= 5; n++ {
		id, cfg, took, restored := runPod(n)
		if !restored {
			remove(id)
			t.Fatalf("pod %d booted cold with a current template", n)
		}
		times = append(times, took)
		if n == 1 {
			// A restored pod's share (hot-plugged virtio-fs) and NIC work.
			checkContainer(ctx, t, d, id, cfg, imageRef)
		}
		remove(id)
	}
	slices.Sort(times)
	t.Logf("RunPodSandbox: cold boot %v; restored from the template: p50 %v, min %v, max %v (%d pods)",
		cold.Round(time.Millisecond), times[len(times)/2].Round(time.Millisecond),
		times[0].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond), len(times))
}

// checkContainer runs a container in the pod and checks what it sees of the
// pod: the pod files the share carries, and the pod's address on its NIC.
func checkContainer(ctx context.Context, t *testing.T, d *env, podID string, cfg *runtimeapi.PodSandboxConfig, imageRef string) {
	t.Helper()
	create, err := d.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: podID, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
			Image:    &runtimeapi.ImageSpec{Image: imageRef, UserSpecifiedImage: busybox},
			Command:  []string{"sleep", "3600"},
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer in a restored pod: %v", err)
	}
	if _, err := d.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: create.ContainerId}); err != nil {
		t.Fatalf("StartContainer in a restored pod: %v", err)
	}
	pst, err := d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
	if err != nil {
		t.Fatal(err)
	}
	ip := pst.GetStatus().GetNetwork().GetIp()
	out, err := d.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: create.ContainerId, Cmd: []string{"sh", "-c", "cat /etc/hostname; ip addr"}, Timeout: 30})
	if err != nil || ip == "" || !strings.Contains(string(out.Stdout), cfg.Hostname) || !strings.Contains(string(out.Stdout), ip+"/") {
		t.Fatalf("ExecSync in a restored pod (want hostname %s, address %s): %v, %q", cfg.Hostname, ip, err, out.GetStdout())
	}
}
