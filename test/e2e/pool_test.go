package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const poolOfOne = "[runtime.handlers.cocoon.pool]\nsize = 1\n"

// warmVMsReady lists, in order, the warm VMs a cocoond log reports ready.
func warmVMsReady(logPath string) []string {
	return loggedWarmVMs(logPath, "warm VM ready")
}

// loggedWarmVMs lists the warm_vm field of the log entries with message msg.
func loggedWarmVMs(logPath, msg string) []string {
	data, _ := os.ReadFile(logPath)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		var entry struct {
			Msg    string `json:"msg"`
			WarmVM string `json:"warm_vm"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == msg && entry.WarmVM != "" {
			out = append(out, entry.WarmVM)
		}
	}
	return out
}

// waitWarm waits until the log reports n warm VMs ready and returns them.
func waitWarm(t *testing.T, logPath string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		if ids := warmVMsReady(logPath); len(ids) >= n {
			return ids
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("fewer than %d warm VMs ready after 4m; log:\n%s", n, tail(string(log), 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// warmLeftovers lists what of warm VM id exists under the daemon's dir:
// its run dir, netns pin, VM dir and processes.
func warmLeftovers(dir, id string) []string {
	var out []string
	for _, p := range []string{
		filepath.Join(dir, "run", "sandboxes", id),
		filepath.Join(dir, "run", "netns", id),
		filepath.Join(dir, "run", "vm", id[:16]),
	} {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, p)
		}
	}
	if pids := processesUnder(filepath.Join(dir, "run", "vm", id[:16])); len(pids) > 0 {
		out = append(out, "processes")
	}
	return out
}

// TestWarmPool runs pods from a real warm pool: a claim takes the waiting
// VM (the pod gets its ID), the pool refills, a claimed pod serves exec and
// network like a cold one, a warm VM killed while it waits is replaced and
// leaves nothing, and a cocoond killed with a warm VM waiting reclaims it at
// start while its pods carry on.
func TestWarmPool(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	ctx := ctxT(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "cocoond.log")
	d, err := startDaemon(e.bin, dir, poolOfOne)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			if keep := os.Getenv("COCOON_KEEP_LOG"); keep != "" {
				_ = os.WriteFile(keep, data, 0o644)
			}
			for _, l := range strings.Split(string(data), "\n") {
				if strings.Contains(l, `"level":"warning"`) || strings.Contains(l, `"level":"error"`) {
					t.Log(l)
				}
			}
		}
	})
	var seen []string // every warm VM, claimed or not
	defer func() {
		if err := d.shutdown(); err != nil {
			t.Error(err)
		}
		seen = append(seen, warmVMsReady(logPath)...)
		for _, id := range seen {
			if left := warmLeftovers(dir, id); len(left) > 0 {
				t.Errorf("warm VM %s left %v", id, left)
			}
		}
		if entries, _ := os.ReadDir(filepath.Join(dir, "run", "netns")); len(entries) != 0 {
			t.Errorf("netns left after shutdown: %v", entries)
		}
		if m := mountsUnder(filepath.Join(dir, "run")); len(m) > 0 {
			t.Errorf("mounts left after shutdown: %v", m)
		}
	}()
	imageRef := pull(t, d, busybox)

	runPod := func(name string) string {
		t.Helper()
		cfg := &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name},
			Hostname:     name,
			LogDirectory: t.TempDir(),
			DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.10.10.10"}},
		}
		start := time.Now()
		run, err := d.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			t.Fatalf("RunPodSandbox %s: %v", name, err)
		}
		t.Logf("RunPodSandbox %s took %v", name, time.Since(start))
		c, err := d.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: run.PodSandboxId, SandboxConfig: cfg,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "web"},
				Image:    &runtimeapi.ImageSpec{Image: imageRef},
				Command:  []string{"sh", "-c", "mkdir -p /www && echo served-by-" + name + " > /www/index.html && exec httpd -f -p 8080 -h /www"},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatal(err)
		}
		return run.PodSandboxId
	}
	execIn := func(podID string, cmd ...string) string {
		t.Helper()
		cs, err := d.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: podID}})
		if err != nil || len(cs.Containers) != 1 {
			t.Fatalf("containers of %s: %v, %v", podID, cs, err)
		}
		out, err := d.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cs.Containers[0].Id, Cmd: cmd, Timeout: 30})
		if err != nil || out.ExitCode != 0 {
			t.Fatalf("exec %v in %s: %v, %v", cmd, podID, out, err)
		}
		return string(out.Stdout)
	}
	podIP := func(podID string) string {
		st, err := d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
		if err != nil || st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Fatalf("pod %s: %v, %v", podID, st, err)
		}
		return st.Status.GetNetwork().GetIp()
	}

	// Claim: the pod takes the waiting VM, and with it its ID.
	warm := waitWarm(t, logPath, 1)
	a := runPod("pool-a")
	if a != warm[0] {
		t.Fatalf("pod %s did not claim warm VM %s", a, warm[0])
	}
	// Refill, and a second claim from it.
	warm = waitWarm(t, logPath, 2)
	b := runPod("pool-b")
	if b != warm[1] {
		t.Fatalf("pod %s did not claim the refilled warm VM %s", b, warm[1])
	}
	// Claimed pods are whole pods: identity, DNS, and the network between
	// them. (No wget -T: Debian's busybox 1.35 wget segfaults on it.)
	if out := execIn(a, "sh", "-c", "hostname; cat /etc/resolv.conf"); !strings.Contains(out, "pool-a") || !strings.Contains(out, "nameserver 10.10.10.10") {
		t.Fatalf("identity of the claimed pod: %q", out)
	}
	if out := execIn(a, "wget", "-q", "-O", "-", "http://"+podIP(b)+":8080/"); !strings.Contains(out, "served-by-pool-b") {
		t.Fatalf("pool-a fetched %q from pool-b", out)
	}
	if out := execIn(b, "wget", "-q", "-O", "-", "http://"+podIP(a)+":8080/"); !strings.Contains(out, "served-by-pool-a") {
		t.Fatalf("pool-b fetched %q from pool-a", out)
	}

	// A warm VM that dies while waiting is discarded whole and replaced.
	warm = waitWarm(t, logPath, 3)
	victim := warm[2]
	for _, pid := range liveProcesses(func(stat, cmdline string) bool {
		return strings.Contains(stat, "(qemu-system-x86") && strings.Contains(cmdline, filepath.Join(dir, "run", "vm", victim[:16]))
	}) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	warm = waitWarm(t, logPath, 4)
	deadline := time.Now().Add(30 * time.Second)
	for left := warmLeftovers(dir, victim); len(left) > 0; left = warmLeftovers(dir, victim) {
		if time.Now().After(deadline) {
			t.Fatalf("killed warm VM %s left %v", victim, left)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if died := loggedWarmVMs(logPath, "warm VM died; replacing it"); len(died) != 1 || died[0] != victim {
		t.Fatalf("deaths logged: %v, want [%s]", died, victim)
	}

	// cocoond killed with a warm VM waiting: the next start reclaims it
	// (it has no pod record) and re-adopts the pods.
	waiting := warm[3]
	if left := warmLeftovers(dir, waiting); len(left) != 4 {
		t.Fatalf("the waiting warm VM has %v, want its dirs, netns and processes", left)
	}
	seen = append(seen, warm...)
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
	// A killed cocoond leaves its socket, which startDaemon waits for.
	_ = os.Remove(d.socket)
	restarted, err := startDaemon(e.bin, dir, poolOfOne)
	if err != nil {
		// Nothing would stop the pods' VMs: kill them here.
		for _, pid := range processesUnder(filepath.Join(dir, "run", "vm")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		t.Fatal(err)
	}
	d = restarted
	if left := warmLeftovers(dir, waiting); len(left) > 0 {
		t.Fatalf("warm VM %s of the killed cocoond left %v", waiting, left)
	}
	if out := execIn(a, "wget", "-q", "-O", "-", "http://"+podIP(b)+":8080/"); !strings.Contains(out, "served-by-pool-b") {
		t.Fatalf("after the restart pool-a fetched %q from pool-b", out)
	}
	waitWarm(t, logPath, 1)
	// Pods from the pool stop and go like any other; shutdown (SIGTERM)
	// then discards the waiting warm VM, and checks no VM runs.
	for _, id := range []string{a, b} {
		if _, err := d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
}
