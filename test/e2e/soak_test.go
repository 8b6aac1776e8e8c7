package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodSoak runs COCOON_SOAK_CYCLES pod cycles (default 3; the hardening
// soak runs 200) against a daemon of its own: a pod, a container, an exec,
// the VMM of every fifth pod killed under it, stop, remove. Then it counts
// what is left, by kind, and cocoond's RSS before and after.
func TestPodSoak(t *testing.T) {
	shared := requireEnv(t) // the registry
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	cycles := 3
	if n, err := strconv.Atoi(os.Getenv("COCOON_SOAK_CYCLES")); err == nil {
		cycles = n
	}
	dir := t.TempDir()
	e, err := startDaemon(shared.bin, filepath.Join(dir, "daemon"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.shutdown(); err != nil {
			t.Error(err)
		}
	}()
	imageRef := pull(t, e, busybox)
	leases0, _ := filepath.Glob("/var/lib/cni/networks/e2e/10.*")
	links0, procs0 := hostLinks(), vmProcesses()
	rss0 := rssKiB(e.cmd.Process.Pid)
	start := time.Now()
	killed := 0
	for i := range cycles {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		podCfg := &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: "soak", Namespace: "default", Uid: "soak-" + strconv.Itoa(i)},
			Hostname:     "soak",
			LogDirectory: filepath.Join(dir, "logs", strconv.Itoa(i)),
		}
		run, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
		if err != nil {
			cancel()
			t.Fatalf("cycle %d: RunPodSandbox: %v", i, err)
		}
		pod := run.PodSandboxId
		create, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: pod, SandboxConfig: podCfg,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
				Image:    &runtimeapi.ImageSpec{Image: imageRef},
				Command:  []string{"sh", "-c", "echo up; exec sleep 3600"},
				LogPath:  "main.log",
			},
		})
		if err != nil {
			cancel()
			t.Fatalf("cycle %d: CreateContainer: %v", i, err)
		}
		if _, err := e.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: create.ContainerId}); err != nil {
			cancel()
			t.Fatalf("cycle %d: StartContainer: %v", i, err)
		}
		res, err := e.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: create.ContainerId, Cmd: []string{"echo", "soak-" + strconv.Itoa(i)}, Timeout: 30})
		if err != nil || strings.TrimSpace(string(res.Stdout)) != "soak-"+strconv.Itoa(i) {
			cancel()
			t.Fatalf("cycle %d: ExecSync: %v %q", i, err, res.GetStdout())
		}
		if i%5 == 4 {
			// The VMM dies under a running pod: the pod must end NOTREADY and
			// stop and remove like any other.
			vmDir := filepath.Join(e.dir, "run", "vm", pod[:16])
			for _, pid := range processesUnder(vmDir) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			killed++
			waitPodNotReady(ctx, t, e, pod)
		}
		if _, err := e.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
			cancel()
			t.Fatalf("cycle %d: StopPodSandbox: %v", i, err)
		}
		if _, err := e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
			cancel()
			t.Fatalf("cycle %d: RemovePodSandbox: %v", i, err)
		}
		cancel()
	}
	took := time.Since(start)
	time.Sleep(300 * time.Millisecond)
	rss1 := rssKiB(e.cmd.Process.Pid)
	count := func(pattern string) int {
		m, _ := filepath.Glob(pattern)
		return len(m)
	}
	leases, _ := filepath.Glob("/var/lib/cni/networks/e2e/10.*")
	leaks := map[string]int{
		"netns":              count(filepath.Join(e.dir, "run", "netns", "*")),
		"vm dirs":            count(filepath.Join(e.dir, "run", "vm", "*")),
		"pod run dirs":       count(filepath.Join(e.dir, "run", "sandboxes", "*")),
		"pod records":        count(filepath.Join(e.dir, "lib", "sandboxes", "pods", "*")),
		"container records":  count(filepath.Join(e.dir, "lib", "sandboxes", "containers", "*")),
		"cni records":        count(filepath.Join(e.dir, "lib", "cni", "*.json")),
		"storage containers": len(storageContainers(e.dir)),
		"host links":         len(hostLinks()) - len(links0),
		"vmm processes":      len(vmProcesses()) - len(procs0),
		"mounts":             len(mountsUnder(filepath.Join(e.dir, "run"))),
		"ip allocations":     len(leases) - len(leases0),
	}
	t.Logf("soak: %d cycles (%d VMMs killed) in %v; cocoond RSS %d KiB before, %d KiB after; leftovers %v",
		cycles, killed, took.Round(time.Second), rss0, rss1, leaks)
	for what, n := range leaks {
		if n != 0 {
			t.Errorf("%d %s left after %d cycles", n, what, cycles)
		}
	}
}

func waitPodNotReady(ctx context.Context, t *testing.T, e *env, pod string) {
	t.Helper()
	for ctx.Err() == nil {
		st, err := e.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
		if err == nil && st.Status.State == runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("pod %s still ready after its VMM was killed", pod)
}

// rssKiB reads a process's resident set size.
func rssKiB(pid int) int {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}
