package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestDaemonRestartChangesNothing restarts cocoond under a running pod: the
// pod, its container, exec, logs and teardown behave as if nothing happened.
func TestDaemonRestartChangesNothing(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	dir := t.TempDir()
	d, err := startDaemon(e.bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.shutdown(); err != nil {
			t.Error(err)
		}
	}()
	ctx := ctxT(t)
	if _, err := d.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec(busybox)}); err != nil {
		t.Fatal(err)
	}
	logDir := t.TempDir()
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "restart", Namespace: "default", Uid: "restart-1"},
		Hostname: "restart", LogDirectory: logDir,
	}
	run, err := d.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: run.PodSandboxId, SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "ticker"},
			Image:    &runtimeapi.ImageSpec{Image: busybox},
			Command:  []string{"sh", "-c", "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.5; done"},
			LogPath:  "ticker.log",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)

	// Restart the daemon on the same state.
	if err := d.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	logPath := filepath.Join(logDir, "ticker.log")
	before, _ := os.ReadFile(logPath)
	d, err = startDaemon(e.bin, dir)
	if err != nil {
		t.Fatal(err)
	}

	pst, err := d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: run.PodSandboxId})
	if err != nil || pst.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after restart: %v, %v", pst, err)
	}
	cst, err := d.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ContainerId})
	if err != nil || cst.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("container after restart: %v, %v", cst, err)
	}
	out, err := d.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c.ContainerId, Cmd: []string{"hostname"}, Timeout: 30})
	if err != nil || strings.TrimSpace(string(out.Stdout)) != "restart" {
		t.Fatalf("exec after restart: %v, %v", out, err)
	}
	// Log copying resumed: the file keeps growing with new ticks.
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, _ := os.ReadFile(logPath)
		if len(after) > len(before)+20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log stopped growing after restart (%d bytes before, %d after)", len(before), len(after))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	if vms, _ := os.ReadDir(filepath.Join(dir, "run", "vm")); len(vms) != 0 {
		t.Fatalf("VM dirs left: %v", vms)
	}
}
