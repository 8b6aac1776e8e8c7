package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestExecSyncBoundedInVM: in a real pod VM, a probe that leaves a job
// holding its stdout returns once its shell exits, and a probe printing more
// than 16 MiB gets what fits a CRI reply (16 MiB less room for the rest).
func TestExecSyncBoundedInVM(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	ctx := ctxT(t)
	imageRef := pull(t, e, busybox)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "e2e-bounded", Namespace: "default", Uid: "uid-bounded"},
		LogDirectory: t.TempDir(),
	}
	run, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	defer e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId})
	defer e.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: run.PodSandboxId})
	create, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: run.PodSandboxId, SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
			Image:    &runtimeapi.ImageSpec{Image: imageRef, UserSpecifiedImage: busybox},
			Command:  []string{"sleep", "3600"},
			LogPath:  "main/0.log",
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := e.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: create.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}

	start := time.Now()
	res, err := e.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: create.ContainerId, Cmd: []string{"sh", "-c", "echo started; sleep 86400 &"}, Timeout: 60})
	if err != nil || res.ExitCode != 0 || !strings.Contains(string(res.Stdout), "started") {
		t.Fatalf("ExecSync with a job holding stdout: %v, %v", res, err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("ExecSync with a job holding stdout took %v", took)
	}
	t.Logf("ExecSync with a job holding stdout returned in %v", time.Since(start))
	start = time.Now()

	res, err = e.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: create.ContainerId, Cmd: []string{"sh", "-c", "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 20000000"}, Timeout: 120},
		grpc.MaxCallRecvMsgSize(16<<20)) // kubelet's limit
	// 16 MiB kept in the sandbox, trimmed to fit the 16 MiB reply.
	if err != nil || res.ExitCode != 0 || len(res.Stdout) < 15<<20 || len(res.Stdout) > 16<<20 {
		t.Fatalf("ExecSync printing 20 MB: %d bytes of stdout, %v", len(res.GetStdout()), err)
	}
	t.Logf("ExecSync printing 20 MB returned %d bytes in %v", len(res.Stdout), time.Since(start))
	st, err := e.runtime.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{})
	if err != nil || len(st.GetStats()) == 0 {
		t.Fatalf("ListPodSandboxStats after the probes: %v, %v", st, err)
	}
}
