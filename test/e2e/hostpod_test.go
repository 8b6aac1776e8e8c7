package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// hostPodPort is where the hostNetwork pod's httpd listens on the host.
const hostPodPort = 18123

// TestHostNamespacePods runs pods that ask for the host's namespaces, which
// no VM can give: cocoond runs them as host containers (the default
// host_namespace_pods = "host"). A hostNetwork pod serves on the host's
// loopback; a hostPID pod on a CNI network sees a host process; exec, logs,
// stats and OOM work as in a VM pod; a cocoond restart keeps the containers
// running with not one log line lost; removal leaves nothing behind.
func TestHostNamespacePods(t *testing.T) {
	e := requireEnv(t)
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
	nodeHostname, _ := os.Hostname()

	// A hostNetwork pod: httpd on the host's loopback, and a ticker whose
	// log must survive a cocoond restart line for line.
	netCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "hostnet", Namespace: "default", Uid: "hostnet-1"},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER},
		}},
	}
	netPod := runPod(ctx, t, d, netCfg)
	web := startCtr(ctx, t, d, netPod, netCfg, "web", nil,
		"sh", "-c", fmt.Sprintf("echo hostpod-ok > /tmp/index.html; httpd -p 127.0.0.1:%d -h /tmp; i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.2; done", hostPodPort))
	if body := httpGetRetry(t, fmt.Sprintf("http://127.0.0.1:%d/index.html", hostPodPort)); body != "hostpod-ok\n" {
		t.Fatalf("hostNetwork pod served %q", body)
	}
	if out := execOK(ctx, t, d, web, "hostname"); out != nodeHostname {
		t.Fatalf("hostNetwork pod's hostname %q, want the node's %q", out, nodeHostname)
	}
	// Confinement is runc's: no capability beyond the default set.
	if out := execOK(ctx, t, d, web, "sh", "-c", "grep CapEff /proc/self/status"); !strings.Contains(out, "00000000a80425fb") {
		t.Fatalf("container capabilities: %q", out)
	}
	checkHostPodCgroups(t, dir, netPod, web)
	st, err := d.runtime.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: web})
	if err != nil || st.GetStats().GetMemory().GetWorkingSetBytes().GetValue() == 0 || st.GetStats().GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Fatalf("stats: %v %v", st, err)
	}

	// OOM: a 16 MiB limit ends in 137/OOMKilled, as in a VM.
	oom := startCtr(ctx, t, d, netPod, netCfg, "oom", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 16 << 20},
		"sh", "-c", "x=a; while :; do x=$x$x; done")
	cst := waitExited(ctx, t, d, oom)
	if cst.ExitCode != 137 || cst.Reason != "OOMKilled" {
		t.Fatalf("OOM container exited %d %q", cst.ExitCode, cst.Reason)
	}

	// A hostPID pod on the pod network: it sees a host process.
	marker := exec.Command("sleep", "31337")
	if err := marker.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = marker.Process.Kill(); _ = marker.Wait() }()
	pidCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "hostpid", Namespace: "default", Uid: "hostpid-1"},
		Hostname:     "hostpid-pod",
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE},
		}},
	}
	pidPod := runPod(ctx, t, d, pidCfg)
	top := startCtr(ctx, t, d, pidPod, pidCfg, "top", nil, "sleep", "3600")
	if out := execOK(ctx, t, d, top, "cat", fmt.Sprintf("/proc/%d/cmdline", marker.Process.Pid)); !strings.Contains(out, "31337") {
		t.Fatalf("hostPID pod does not see the host's sleep 31337: %q", out)
	}
	if out := execOK(ctx, t, d, top, "hostname"); out != "hostpid-pod" {
		t.Fatalf("hostPID pod's hostname %q: want its own", out)
	}
	pst, err := d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pidPod})
	if err != nil || pst.GetStatus().GetNetwork().GetIp() == "" {
		t.Fatalf("hostPID pod has no pod IP: %v %v", pst, err)
	}
	if out := execOK(ctx, t, d, top, "sh", "-c", "ip -4 -o addr show eth0"); !strings.Contains(out, pst.GetStatus().GetNetwork().GetIp()) {
		t.Fatalf("the container is not on the pod network: %q", out)
	}

	// A hostIPC pod whose containers share a PID namespace (critest's
	// HostIpc spec): it sees the host's shared memory segments.
	out, err := exec.Command("ipcmk", "-M", "4096").Output()
	if err != nil {
		t.Fatalf("ipcmk: %v", err)
	}
	segment := strings.TrimPrefix(strings.TrimSpace(string(out)), "Shared memory id: ")
	defer func() { _ = exec.Command("ipcrm", "-m", segment).Run() }()
	ipcCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "hostipc", Namespace: "default", Uid: "hostipc-1"},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_POD},
		}},
	}
	ipcPod := runPod(ctx, t, d, ipcCfg)
	ipc := startCtr(ctx, t, d, ipcPod, ipcCfg, "ipc", nil, "sleep", "3600")
	if out := execOK(ctx, t, d, ipc, "ipcs", "-m"); !strings.Contains(out, segment) {
		t.Fatalf("hostIPC pod does not see the host's segment %s:\n%s", segment, out)
	}
	if _, err := d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: ipcPod}); err != nil {
		t.Fatal(err)
	}

	// Restart cocoond: the containers keep running, nothing of the log is lost.
	agents := processesUnder(filepath.Join(dir, "run", "vm"))
	if err := d.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	time.Sleep(time.Second) // ticks while no cocoond runs
	if left := processesUnder(filepath.Join(dir, "run", "vm")); len(left) != len(agents) {
		t.Fatalf("host pods' agents %v before the restart, %v while cocoond is down", agents, left)
	}
	if d, err = startDaemon(e.bin, dir); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{web, top} {
		cst, err := d.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil || cst.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("container after restart: %v, %v", cst, err)
		}
	}
	if out := execOK(ctx, t, d, web, "echo", "after-restart"); out != "after-restart" {
		t.Fatalf("exec after restart: %q", out)
	}
	if body := httpGetRetry(t, fmt.Sprintf("http://127.0.0.1:%d/index.html", hostPodPort)); body != "hostpod-ok\n" {
		t.Fatalf("after restart the pod served %q", body)
	}
	waitTicks(t, filepath.Join(logDir, "web.log"), 30)

	// Removal leaves no process, mount or cgroup.
	var ctrIDs []string
	for _, id := range []string{netPod, pidPod} {
		cs, _ := d.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: id}})
		for _, c := range cs.GetContainers() {
			ctrIDs = append(ctrIDs, c.Id)
		}
		if _, err := d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if left := processesUnder(filepath.Join(dir, "run", "vm")); len(left) > 0 {
		t.Fatalf("host pod agents left: %v", left)
	}
	if left := liveProcesses(func(_, cmdline string) bool { return strings.Contains(cmdline, "31337") }); len(left) != 1 {
		t.Fatalf("processes naming 31337 after removal: %v (want only the test's own sleep)", left)
	}
	for _, m := range mountsUnder(dir) {
		// The storage driver's own home mount stays while cocoond runs;
		// rootfs mounts, netns pins and pod shares must be gone.
		if rel, _ := filepath.Rel(dir, m); rel != "lib/storage/overlay" {
			t.Errorf("mount left: %s", rel)
		}
	}
	if s := strayPodCgroups(ctx, d); len(s) > 0 {
		t.Fatalf("cgroups left: %v", s)
	}
	if left := cgroupsNamed(ctrIDs); len(left) > 0 {
		t.Fatalf("container cgroups left: %v", left)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "run", "vm")); len(entries) != 0 {
		t.Fatalf("run dirs left: %v", entries)
	}
}

func runPod(ctx context.Context, t *testing.T, d *env, cfg *runtimeapi.PodSandboxConfig) string {
	t.Helper()
	r, err := d.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return r.PodSandboxId
}

func startCtr(ctx context.Context, t *testing.T, d *env, pod string, podCfg *runtimeapi.PodSandboxConfig, name string, res *runtimeapi.LinuxContainerResources, cmd ...string) string {
	t.Helper()
	c, err := d.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod, SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: busybox},
			Command:  cmd,
			LogPath:  name + ".log",
			Linux: &runtimeapi.LinuxContainerConfig{
				Resources:       res,
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: podCfg.GetLinux().GetSecurityContext().GetNamespaceOptions()},
			},
		},
	})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	if _, err := d.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		logs, _ := exec.Command("sh", "-c", "tail -n 20 "+d.dir+"/run/vm/*/cocoon-agent.log").CombinedOutput()
		t.Fatalf("start %s: %v\nhost pod agents' logs:\n%s", name, err, logs)
	}
	return c.ContainerId
}

func execOK(ctx context.Context, t *testing.T, d *env, id string, cmd ...string) string {
	t.Helper()
	out, err := d.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
	if err != nil || out.ExitCode != 0 {
		t.Fatalf("exec %v: %v %v", cmd, out, err)
	}
	return strings.TrimSpace(string(out.Stdout))
}

func waitExited(ctx context.Context, t *testing.T, d *env, id string) *runtimeapi.ContainerStatus {
	t.Helper()
	for {
		st, err := d.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st.Status
		}
		select {
		case <-ctx.Done():
			t.Fatalf("container %s did not exit: %v", id, st.Status)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func httpGetRetry(t *testing.T, url string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var tickLine = regexp.MustCompile(`^\S+ stdout F tick-(\d+)$`)

// waitTicks waits for at least n ticks in the CRI log and checks every tick
// from the first is there, in order: none was lost across the restart.
func waitTicks(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		var got []int
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if m := tickLine.FindStringSubmatch(line); m != nil {
				v, _ := strconv.Atoi(m[1])
				got = append(got, v)
			}
		}
		for i, v := range got {
			if v != i {
				t.Fatalf("log line %d is tick-%d: ticks were lost or reordered\n%s", i, v, data)
			}
		}
		if len(got) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d ticks in %s", len(got), path)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cgroupsNamed lists cgroup directories, in any hierarchy, named after one
// of ids (a host container's cgroup left behind).
func cgroupsNamed(ids []string) []string {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	mounts, _ := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	var out []string
	for _, m := range mounts {
		_ = filepath.WalkDir(m.Mountpoint, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() && want[de.Name()] {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}
