package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodLifecycleOverCRI runs a pod and a container through the real socket.
func TestPodLifecycleOverCRI(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	ctx := ctxT(t)
	imageRef := pull(t, e, busybox)
	logDir := t.TempDir()
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "e2e-pod", Namespace: "default", Uid: "uid-1"},
		Hostname:     "e2e-host",
		LogDirectory: logDir,
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.10.10.10"}, Searches: []string{"example.com"}},
		Labels:       map[string]string{"app": "e2e"},
	}
	run, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := run.PodSandboxId
	defer e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
	evCtx, stopEvents := context.WithCancel(ctx)
	events, err := e.runtime.GetContainerEvents(evCtx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []string, 1)
	go func() {
		var seen []string
		for {
			ev, err := events.Recv()
			if err != nil {
				got <- seen
				return
			}
			if ev.GetPodSandboxStatus().GetId() == podID {
				seen = append(seen, ev.ContainerId[:8]+":"+ev.ContainerEventType.String())
			}
		}
	}()

	pst, err := e.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
	if err != nil || pst.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || pst.Status.GetNetwork().GetIp() == "" {
		t.Fatalf("pod status: %v, %v", pst, err)
	}

	create, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: podID, SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
			Image:    &runtimeapi.ImageSpec{Image: imageRef, UserSpecifiedImage: busybox},
			Command:  []string{"sh", "-c", "trap '' TERM; echo hello-log; while :; do sleep 1; done"},
			LogPath:  "main/0.log",
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	cid := create.ContainerId
	if _, err := e.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cid}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	exec, err := e.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "echo exec-ok; hostname; cat /etc/resolv.conf /etc/hostname; exit 3"}, Timeout: 30})
	if err != nil || exec.ExitCode != 3 || !strings.Contains(string(exec.Stdout), "exec-ok") || !strings.Contains(string(exec.Stdout), "e2e-host") ||
		!strings.Contains(string(exec.Stdout), "nameserver 10.10.10.10\nsearch example.com") {
		t.Fatalf("ExecSync: %v, %v", exec, err)
	}
	cs, err := e.runtime.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: cid})
	if err != nil || cs.Stats.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 || cs.Stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 {
		t.Fatalf("ContainerStats: %v, %v", cs, err)
	}
	ps, err := e.runtime.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: podID})
	if err != nil || len(ps.Stats.GetLinux().GetContainers()) != 1 || ps.Stats.GetLinux().GetProcess().GetProcessCount().GetValue() == 0 {
		t.Fatalf("PodSandboxStats: %v, %v", ps, err)
	}
	ls, err := e.runtime.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{PodSandboxId: podID}})
	if err != nil || len(ls.Stats) != 1 {
		t.Fatalf("ListContainerStats: %v, %v", ls, err)
	}
	// A limit above the VM's 256 MiB grows the VM, then the cgroup takes it.
	const limit = 400 << 20
	if _, err := e.runtime.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{
		ContainerId: cid, Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: limit, CpuPeriod: 100000, CpuQuota: 150000},
	}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	mem, err := e.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; grep MemTotal /proc/meminfo"}, Timeout: 30})
	if err != nil || !strings.Contains(string(mem.Stdout), "419430400") || !strings.Contains(string(mem.Stdout), "150000 100000") {
		t.Fatalf("limits in the guest after update: %v, %q", err, mem.GetStdout())
	}
	if pst, _ := e.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID, Verbose: true}); !strings.Contains(pst.Info["info"], `"vcpus":2`) {
		t.Fatalf("VM not grown: %s", pst.Info["info"])
	}
	st, err := e.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cid})
	if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING || st.Status.ImageId != imageRef || st.Status.LogPath != filepath.Join(logDir, "main/0.log") {
		t.Fatalf("ContainerStatus: %v, %v", st, err)
	}
	list, err := e.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: podID}})
	if err != nil || len(list.Containers) != 1 || list.Containers[0].ImageId != imageRef {
		t.Fatalf("ListContainers: %v, %v", list, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(st.Status.LogPath)
		if strings.Contains(string(data), " stdout F hello-log") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %q", data)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The container ignores SIGTERM: StopContainer must wait the timeout out,
	// then kill it (137).
	stopStart := time.Now()
	if _, err := e.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: 2}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	st, _ = e.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cid})
	if took := time.Since(stopStart); st.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.Status.ExitCode != 137 || took < 2*time.Second {
		t.Fatalf("after stop (%v): %v", took, st.Status)
	}
	if _, err := e.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cid}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := e.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	stopEvents()
	seen := strings.Join(<-got, " ")
	for _, want := range []string{"CONTAINER_CREATED_EVENT", "CONTAINER_STARTED_EVENT", "CONTAINER_STOPPED_EVENT", "CONTAINER_DELETED_EVENT"} {
		if !strings.Contains(seen, cid[:8]+":"+want) {
			t.Errorf("no %s for the container in events %q", want, seen)
		}
	}
	// Nothing of the pod is left: run dir, netns, VMM processes, mounts.
	if _, err := os.Stat(filepath.Join(e.dir, "run", "sandboxes", podID)); !os.IsNotExist(err) {
		t.Errorf("pod run dir left: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.dir, "run", "netns")); len(entries) != 0 {
		t.Errorf("netns left: %v", entries)
	}
	if m := mountsUnder(filepath.Join(e.dir, "run", "sandboxes")); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// TestPodCyclesLeakNothing runs and removes pods over CRI (COCOON_POD_CYCLES,
// default 2) and checks that no netns, veth, tap, VMM process, mount, run dir
// or IP allocation outlives them.
func TestPodCyclesLeakNothing(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	cycles := 2
	if n, err := strconv.Atoi(os.Getenv("COCOON_POD_CYCLES")); err == nil {
		cycles = n
	}
	links0, procs0 := hostLinks(), vmProcesses()
	var runp []time.Duration
	for i := range cycles {
		ctx := ctxT(t) // per cycle: 50 cycles take longer than one deadline
		cfg := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{
			Name: "cycle", Namespace: "default", Uid: "cycle-" + strconv.Itoa(i)}, Hostname: "cycle"}
		start := time.Now()
		run, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		runp = append(runp, time.Since(start))
		if _, err := e.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	netns, _ := os.ReadDir(filepath.Join(e.dir, "run", "netns"))
	vms, _ := os.ReadDir(filepath.Join(e.dir, "run", "vm"))
	ipam, _ := filepath.Glob("/var/lib/cni/networks/e2e/10.*")
	leaks := map[string]int{
		"netns": len(netns), "vm dirs": len(vms), "links": len(hostLinks()) - len(links0),
		"vmm processes": len(vmProcesses()) - len(procs0), "mounts": len(mountsUnder(e.dir + "/run")),
		"ip allocations": len(ipam),
	}
	t.Logf("%d pod cycles: RunPodSandbox %v; leaks %v", cycles, runp, leaks)
	for what, n := range leaks {
		if n != 0 {
			t.Errorf("%d %s left after %d pod cycles", n, what, cycles)
		}
	}
}

// hostLinks lists the host's network links but bridges: a pod leaves veths
// and taps if anything, while a CNI network's bridge is made by its first
// pod and kept on purpose (the bridge plugin never deletes it).
func hostLinks() []string {
	entries, _ := os.ReadDir("/sys/class/net")
	var out []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join("/sys/class/net", e.Name(), "bridge")); err == nil {
			continue
		}
		out = append(out, e.Name())
	}
	return out
}

// vmProcesses lists live qemu and virtiofsd processes.
func vmProcesses() []int {
	return liveProcesses(func(stat, _ string) bool {
		return strings.Contains(stat, "(qemu-system-x86") || strings.Contains(stat, "(virtiofsd)")
	})
}
