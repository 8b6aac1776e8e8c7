package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodCgroupHoldsTheVM runs a pod with a cgroup_parent, as kubelet sends
// it, and checks that its QEMU and virtiofsd (with virtiofsd's worker) live in
// the pod's cgroup in every hierarchy (with cgroupfs in its sandbox leaf, the
// pod cgroup itself holding no process) and nowhere in cocoond's own cgroup,
// that the cgroup is charged the VM's memory (so kubelet's view of the parent
// sees it), and that it is gone once the pod is removed.
func TestPodCgroupHoldsTheVM(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	t.Run("cgroupfs", func(t *testing.T) {
		top := fmt.Sprintf("/cocoon-e2e-%d", os.Getpid())
		t.Cleanup(func() { removeCgroupTree(t, top) })
		parent := top + "/burstable/pode2e-uid-1"
		checkPodCgroup(t, e, parent, "sandbox", func(podID string) string { return parent + "/cocoon-" + podID })
	})
	t.Run("systemd", func(t *testing.T) {
		if _, err := os.Stat("/run/systemd/system"); err != nil {
			init, _ := os.ReadFile("/proc/1/comm")
			t.Skipf("skipping: systemd is not running here (PID 1 is %s), so there is no systemd cgroup driver to test", strings.TrimSpace(string(init)))
		}
		dir := filepath.Join(t.TempDir(), "daemon")
		if err := os.MkdirAll(filepath.Join(dir, "config.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.d", "10-systemd.toml"), []byte("[daemon]\ncgroup_driver = \"systemd\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		sd, err := startDaemon(e.bin, dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := sd.shutdown(); err != nil {
				t.Error(err)
			}
		})
		parent := fmt.Sprintf("cocoone2e%d-pode2e.slice", os.Getpid())
		checkPodCgroup(t, sd, parent, "", func(podID string) string {
			return fmt.Sprintf("/cocoone2e%d.slice/%s/cocoon-%s.scope", os.Getpid(), parent, podID)
		})
	})
}

// checkPodCgroup runs a pod under parent and checks its processes are in
// the leaf procsLeaf below podPath ("" = in the pod cgroup itself).
func checkPodCgroup(t *testing.T, e *env, parent, procsLeaf string, podPath func(podID string) string) {
	ctx := ctxT(t)
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "cgroup-pod", Namespace: "default", Uid: "e2e-uid-1"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{CgroupParent: parent},
	}
	run, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := run.PodSandboxId
	removed := false
	defer func() {
		if !removed {
			_, _ = e.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
		}
	}()
	want := podPath(podID)
	pids := processesUnder(filepath.Join(e.dir, "run", "vm", podID[:16]))
	var names []string
	for _, pid := range pids {
		names = append(names, processName(pid))
	}
	joined := strings.Join(names, " ")
	if !strings.Contains(joined, "qemu-system") || !strings.Contains(joined, "virtiofsd") {
		t.Fatalf("the pod's processes are %v (%v), want QEMU and virtiofsd", pids, names)
	}
	daemon := procCgroups(t, e.cmd.Process.Pid)
	wantProcs := filepath.Join(want, procsLeaf)
	for i, pid := range pids {
		for hierarchy, path := range procCgroups(t, pid) {
			if path != wantProcs {
				t.Errorf("%s (pid %d) is in %s:%s, want %s", names[i], pid, hierarchy, path, wantProcs)
			}
			if path == daemon[hierarchy] {
				t.Errorf("%s (pid %d) is in cocoond's own cgroup %s:%s", names[i], pid, hierarchy, path)
			}
		}
	}
	usage, parentUsage := memoryUsage(t, want), memoryUsage(t, filepath.Dir(want))
	var rss int64
	for _, pid := range pids {
		rss += vmRSS(pid)
	}
	t.Logf("pod cgroup %s: memory usage %.1f MiB (parent %.1f MiB); QEMU+virtiofsd RSS %.1f MiB",
		want, mib(usage), mib(parentUsage), mib(rss))
	t.Logf("memory.stat where its processes are: %s", memoryStat(t, wantProcs))
	if usage <= 0 {
		t.Errorf("pod cgroup memory usage is %d, want the VM's memory charged to it", usage)
	}
	if parentUsage < usage {
		t.Errorf("kubelet's parent cgroup is charged %d bytes, less than the pod cgroup below it (%d)", parentUsage, usage)
	}

	if _, err := e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	removed = true
	for _, mnt := range cgroupMountpoints(t) {
		if _, err := os.Stat(filepath.Join(mnt, want)); !os.IsNotExist(err) {
			t.Errorf("the pod cgroup %s is still there after RemovePodSandbox (%v)", filepath.Join(mnt, want), err)
		}
	}
}

// strayPodCgroups lists the pod cgroups under the default parent (/cocoon:
// pods run without a cgroup_parent) of pods the daemon does not list.
func strayPodCgroups(ctx context.Context, d *env) []string {
	pods, err := d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return []string{"ListPodSandbox: " + err.Error()}
	}
	claimed := map[string]bool{}
	for _, p := range pods.Items {
		claimed["cocoon-"+p.Id] = true
	}
	mounts, _ := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	var out []string
	for _, m := range mounts {
		entries, _ := os.ReadDir(filepath.Join(m.Mountpoint, "cocoon"))
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), "cocoon-") && !claimed[e.Name()] {
				out = append(out, "pod cgroup no pod claims: "+filepath.Join(m.Mountpoint, "cocoon", e.Name()))
			}
		}
	}
	return out
}

// removeDefaultCgroupParent removes cocoond's default parent (/cocoon) from
// every hierarchy, if it is empty: a test left a pod cgroup there otherwise,
// which the leak checks report.
func removeDefaultCgroupParent() {
	mounts, _ := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	for _, m := range mounts {
		dir := filepath.Join(m.Mountpoint, "cocoon")
		if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
			fmt.Println("e2e: teardown: removing", dir+":", err)
		}
	}
}

func processName(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// procCgroups maps each hierarchy of /proc/<pid>/cgroup ("memory",
// "cpu,cpuacct", "name=systemd", "" for v2) to the process's cgroup there.
func procCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			out[parts[1]] = parts[2]
		}
	}
	return out
}

func cgroupMounts(t *testing.T) []*mountinfo.Info {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		t.Fatal(err)
	}
	return mounts
}

func cgroupMountpoints(t *testing.T) []string {
	var out []string
	for _, m := range cgroupMounts(t) {
		out = append(out, m.Mountpoint)
	}
	return out
}

// memoryUsage reads a cgroup's memory usage from the v1 memory hierarchy, or
// from the v2 one where memory is a v2 controller.
func memoryUsage(t *testing.T, path string) int64 {
	t.Helper()
	for _, m := range cgroupMounts(t) {
		file := ""
		switch {
		case m.FSType == "cgroup" && strings.Contains(","+m.VFSOptions+",", ",memory,"):
			file = "memory.usage_in_bytes"
		case m.FSType == "cgroup2":
			if ctl, _ := os.ReadFile(filepath.Join(m.Mountpoint, "cgroup.controllers")); strings.Contains(string(ctl), "memory") {
				file = "memory.current"
			}
		}
		if file == "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.Mountpoint, path, file))
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Fatal("no cgroup hierarchy has the memory controller")
	return 0
}

// memoryStat sums up where a cgroup's memory goes (v1 or v2 memory.stat), in MiB.
func memoryStat(t *testing.T, path string) string {
	t.Helper()
	keys := []string{"rss", "shmem", "cache", "mapped_file", "anon", "file", "kernel"}
	var out []string
	for _, m := range cgroupMounts(t) {
		b, err := os.ReadFile(filepath.Join(m.Mountpoint, path, "memory.stat"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && slices.Contains(keys, f[0]) {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				out = append(out, fmt.Sprintf("%s %.1f", f[0], mib(n)))
			}
		}
	}
	return strings.Join(out, ", ")
}

func vmRSS(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// removeCgroupTree removes the test's cgroup parents, deepest first, in
// every hierarchy (kubelet's part: cocoond removes only its own leaf).
func removeCgroupTree(t *testing.T, top string) {
	for _, mnt := range cgroupMountpoints(t) {
		root := filepath.Join(mnt, top)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil {
				t.Errorf("removing test cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// checkHostPodCgroups checks a host pod's cgroupfs layout below the default
// parent: its agent in the pod cgroup's sandbox leaf, the container in its
// own cgroup beside it, and no process in the pod cgroup itself (cgroup v2
// gives a cgroup's children controllers only while it holds none).
func checkHostPodCgroups(t *testing.T, dir, podID, ctrID string) {
	t.Helper()
	pod := "/cocoon/cocoon-" + podID
	agents := processesUnder(filepath.Join(dir, "run", "vm", podID[:16]))
	if len(agents) == 0 {
		t.Fatalf("no agent runs host pod %s", podID)
	}
	for _, pid := range agents {
		for hierarchy, path := range procCgroups(t, pid) {
			if path != pod+"/sandbox" {
				t.Errorf("the agent (pid %d) is in %s:%s, want %s/sandbox", pid, hierarchy, path, pod)
			}
		}
	}
	var inCtr int
	for _, pid := range liveProcesses(func(string, string) bool { return true }) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			continue // gone meanwhile
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) != 3 {
				continue
			}
			switch parts[2] {
			case pod:
				t.Errorf("pid %d is in the pod cgroup itself (%s)", pid, line)
			case pod + "/" + ctrID:
				inCtr++
			}
		}
	}
	if inCtr == 0 {
		t.Errorf("no process is in the container's cgroup %s/%s", pod, ctrID)
	}
}
