package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// crashHarness restarts one cocoond on one state dir, arming its crash hook.
type crashHarness struct {
	t      *testing.T
	bin    string
	dir    string
	d      *env
	logDir string
	starts int
	leases map[string]bool // the CNI network's lease files before the test
	ports  int             // ports of the test bridge before the test
}

// start runs cocoond, with COCOON_TEST_CRASH_AT=point when point is set.
func (h *crashHarness) start(point string) {
	h.t.Helper()
	if point != "" {
		os.Setenv("COCOON_TEST_CRASH_AT", point)
		defer os.Unsetenv("COCOON_TEST_CRASH_AT")
	}
	// A killed daemon leaves its socket; startDaemon waits for a new one.
	_ = os.Remove(filepath.Join(h.dir, "run", "cocoon.sock"))
	d, err := startDaemon(h.bin, h.dir)
	if err != nil {
		h.t.Fatal(err)
	}
	h.d = d
	h.starts++
	// A network of this test's own (startDaemon writes the shared one): its
	// leases and veths are then ours alone, though other tests run pods on
	// the shared network meanwhile. cocoond reads the conflist per ADD.
	conflist := `{"cniVersion":"1.0.0","name":"` + crashNetwork + `","plugins":[{"type":"bridge","bridge":"` + crashBridge +
		`","ipam":{"type":"host-local","ranges":[[{"subnet":"10.98.0.0/24"}]]}},{"type":"loopback"}]}`
	if err := os.WriteFile(filepath.Join(h.dir, "cni", "10-e2e.conflist"), []byte(conflist), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

const (
	crashNetwork = "e2ecrash"
	crashBridge  = "cocoone2ecrash0"
)

// keepLog saves the daemon's log (startDaemon truncates it) for failures.
func (h *crashHarness) keepLog(what string) {
	data, _ := os.ReadFile(filepath.Join(h.dir, "cocoond.log"))
	_ = os.WriteFile(filepath.Join(h.logDir, fmt.Sprintf("%02d-%s.log", h.starts, strings.ReplaceAll(what, "/", "_"))), data, 0o644)
}

// crash stops the running daemon, starts it armed at point, sends rpc, sees
// the daemon SIGKILL itself, and starts it again unarmed.
func (h *crashHarness) crash(point string, rpc func(ctx context.Context, d *env) error) {
	h.t.Helper()
	if err := h.d.stop(); err != nil {
		h.t.Fatalf("stopping cocoond: %v", err)
	}
	h.keepLog("before-" + point)
	h.start(point)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rpcErr := rpc(ctx, h.d)
	done := make(chan error, 1)
	go func() { done <- h.d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		h.keepLog(point)
		h.t.Fatalf("%s: cocoond did not die (rpc: %v); log in %s", point, rpcErr, h.logDir)
	}
	if ws, ok := h.d.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		h.keepLog(point)
		h.t.Fatalf("%s: cocoond ended with %v, not by the crash hook (rpc: %v)", point, h.d.cmd.ProcessState, rpcErr)
	}
	if rpcErr == nil {
		h.t.Fatalf("%s: the RPC succeeded although cocoond died", point)
	}
	h.keepLog(point)
	h.start("")
}

// leftovers lists what the daemon's dirs, the host and the CNI network hold
// beyond what the pods claim: running says pod VMs (and their networks) may
// run, exist that pods may exist (stopped ones keep their run dirs).
func (h *crashHarness) leftovers(ctx context.Context, running, exist bool) []string {
	var out []string
	run := filepath.Join(h.dir, "run")
	for _, sub := range []string{"vm", "sandboxes"} {
		if pids := processesUnder(filepath.Join(run, sub)); len(pids) > 0 && !running {
			out = append(out, fmt.Sprintf("processes naming run/%s: %v", sub, pids))
		}
	}
	for sub, allowed := range map[string]bool{"vm": running, "netns": running, "sandboxes": exist} {
		entries, _ := os.ReadDir(filepath.Join(run, sub))
		if len(entries) > 0 && !allowed {
			out = append(out, fmt.Sprintf("run/%s holds %d entries", sub, len(entries)))
		}
	}
	for _, m := range mountsUnder(h.dir) {
		rel, _ := filepath.Rel(h.dir, m)
		// The storage driver's own home mount is not a leak; container
		// root filesystems (.../merged) and netns pins are. A pod that still
		// exists keeps its share tmpfs (run/sandboxes/<id>/shared) until it
		// is removed.
		podShare := strings.HasPrefix(rel, "run/sandboxes/") && strings.Count(rel, "/") == 3 && strings.HasSuffix(rel, "/shared")
		if strings.HasSuffix(rel, "/merged") && !exist || strings.HasPrefix(rel, "run/netns/") && !running ||
			strings.HasPrefix(rel, "run/sandboxes/") && !(podShare && exist) || strings.HasPrefix(rel, "run/vm/") {
			out = append(out, "mount "+rel)
		}
	}
	if !running {
		for _, l := range h.newLeases() {
			out = append(out, "IP lease "+l)
		}
		if n := bridgePorts(); n > h.ports {
			out = append(out, fmt.Sprintf("%d veths on %s beyond the %d before", n-h.ports, crashBridge, h.ports))
		}
	}
	out = append(out, strayPodCgroups(ctx, h.d)...)
	claimed := map[string]bool{}
	if list, err := h.d.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err == nil {
		for _, c := range list.Containers {
			claimed[c.Id] = true
		}
	} else {
		out = append(out, "ListContainers: "+err.Error())
	}
	for _, id := range storageContainers(h.dir) {
		if !claimed[id] {
			out = append(out, "storage container no container claims: "+id)
		}
	}
	sort.Strings(out)
	return out
}

func (h *crashHarness) newLeases() []string {
	var out []string
	for l := range leaseFiles() {
		if !h.leases[l] {
			out = append(out, l)
		}
	}
	return out
}

// leaseFiles are host-local's allocations in the tests' network.
func leaseFiles() map[string]bool {
	out := map[string]bool{}
	entries, _ := os.ReadDir("/var/lib/cni/networks/" + crashNetwork)
	for _, e := range entries {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			out[n] = true
		}
	}
	return out
}

func bridgePorts() int {
	br, err := netlink.LinkByName(crashBridge)
	if err != nil {
		return 0
	}
	links, _ := netlink.LinkList()
	n := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			n++
		}
	}
	return n
}

// storageContainers lists the containers/storage containers in the daemon's
// graph root, from the store's own index.
func storageContainers(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "lib", "storage", "*-containers", "containers.json"))
	var ids []string
	for _, f := range files {
		data, _ := os.ReadFile(f)
		var list []struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(data, &list)
		for _, c := range list {
			ids = append(ids, c.ID)
		}
	}
	return ids
}

func (h *crashHarness) assertClean(ctx context.Context, point string, running, exist bool) {
	h.t.Helper()
	if left := h.leftovers(ctx, running, exist); len(left) > 0 {
		h.t.Errorf("after a crash at %s and a restart: %s (logs in %s)", point, strings.Join(left, "; "), h.logDir)
	}
}

// removeAll stops and removes every pod over CRI.
func (h *crashHarness) removeAll(ctx context.Context) {
	h.t.Helper()
	pods, err := h.d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	for _, p := range pods.Items {
		if _, err := h.d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			h.t.Errorf("stop %s: %v", p.Id, err)
		}
		if _, err := h.d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			h.t.Errorf("remove %s: %v", p.Id, err)
		}
	}
}

func (h *crashHarness) onlyPod(ctx context.Context) *runtimeapi.PodSandbox {
	h.t.Helper()
	pods, err := h.d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil || len(pods.Items) != 1 {
		h.t.Fatalf("want one pod after the restart, got %v, %v", pods, err)
	}
	return pods.Items[0]
}

// TestCrashAtEveryStepLeavesNothing kills cocoond (SIGKILL, through its
// COCOON_TEST_CRASH_AT hook) after each step of RunPodSandbox,
// CreateContainer, StopPodSandbox and RemovePodSandbox that makes or
// removes a resource, restarts it, and checks that nothing leaks: no VMM or
// virtiofsd process, run dir, pod cgroup, netns, mount, IP lease, veth or storage
// container that no record claims.
func TestCrashAtEveryStepLeavesNothing(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	logs, err := os.MkdirTemp("", "cocoon-crash-logs.")
	if err != nil {
		t.Fatal(err)
	}
	h := &crashHarness{t: t, bin: e.bin, dir: t.TempDir(), logDir: logs, leases: leaseFiles(), ports: bridgePorts()}
	h.start("")
	defer func() {
		// The bridge plugin never deletes its bridge.
		if l, err := netlink.LinkByName(crashBridge); err == nil {
			_ = netlink.LinkDel(l)
		}
		_ = os.RemoveAll("/var/lib/cni/networks/" + crashNetwork)
	}()
	defer func() {
		if t.Failed() {
			h.keepLog("final")
			t.Logf("daemon logs kept in %s", h.logDir)
		} else {
			os.RemoveAll(h.logDir)
		}
		if err := h.d.shutdown(); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	if _, err := h.d.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec(busybox)}); err != nil {
		t.Fatal(err)
	}
	logDir := t.TempDir()
	podCfg := func(name string) *runtimeapi.PodSandboxConfig {
		return &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "crash", Uid: name + "-uid"},
			LogDirectory: logDir,
		}
	}
	runPod := func(name string) func(context.Context, *env) error {
		return func(ctx context.Context, d *env) error {
			_, err := d.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg(name)})
			return err
		}
	}

	// RunPodSandbox: each step that makes something, in order. The run is
	// cut short, so the restart removes the pod and all it had.
	for _, point := range []string{
		"run-pod/record", "run-pod/dirs", "run-pod/network", "run-pod/cgroup",
		"qemu-create/record", "qemu-create/virtiofsd", "qemu-create/qemu",
		"run-pod/cgroup-join", "run-pod/agent",
	} {
		h.crash(point, runPod("p-"+strings.NewReplacer("/", "-").Replace(point)))
		if pods, err := h.d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 0 {
			t.Errorf("%s: a run cut short left pods %v, %v", point, pods, err)
			h.removeAll(ctx)
		}
		h.assertClean(ctx, point, false, false)
	}

	// Cut short after its record was complete, the pod survives the restart,
	// READY and re-adopted; the containers' crashes run in it.
	h.crash("run-pod/persist", runPod("survivor"))
	pod := h.onlyPod(ctx)
	if pod.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod recorded READY before the crash is %v after the restart", pod.State)
	}
	for _, point := range []string{
		"create-container/record", "create-container/rootfs", "create-container/share", "create-container/agent-create",
	} {
		h.crash(point, func(ctx context.Context, d *env) error {
			_, err := d.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
				PodSandboxId: pod.Id, SandboxConfig: podCfg("survivor"),
				Config: &runtimeapi.ContainerConfig{
					Metadata: &runtimeapi.ContainerMetadata{Name: "c"},
					Image:    spec(busybox), Command: []string{"sleep", "60"}, LogPath: "c.log",
				},
			})
			return err
		})
		if list, err := h.d.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil || len(list.Containers) != 0 {
			t.Errorf("%s: a create cut short left containers %v, %v", point, list, err)
		}
		if st, err := h.d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.Id}); err != nil || st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Fatalf("%s: the pod after the restart: %v, %v", point, st, err)
		}
		h.assertClean(ctx, point, true, true)
	}
	// The pod still runs containers after all that.
	c, err := h.d.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.Id, SandboxConfig: podCfg("survivor"),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}, Image: spec(busybox), Command: []string{"sleep", "60"}, LogPath: "c.log"},
	})
	if err != nil {
		t.Fatalf("create after the crashes: %v", err)
	}
	if _, err := h.d.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("start after the crashes: %v", err)
	}

	// StopPodSandbox cut short after the VM stopped: the restart finishes
	// the stop (the network), the pod stays, NOTREADY.
	stop := func(id string) func(context.Context, *env) error {
		return func(ctx context.Context, d *env) error {
			_, err := d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id})
			return err
		}
	}
	h.crash("stop-pod/vm-stopped", stop(pod.Id))
	if p := h.onlyPod(ctx); p.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod stopped half-way is %v after the restart", p.State)
	}
	h.assertClean(ctx, "stop-pod/vm-stopped", false, true)
	h.removeAll(ctx)
	h.assertClean(ctx, "stop-pod/vm-stopped (then removed)", false, false)

	// A second pod for the last step of a stop and for a removal.
	if _, err := h.d.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg("second")}); err != nil {
		t.Fatal(err)
	}
	pod = h.onlyPod(ctx)
	h.crash("stop-pod/network-detached", stop(pod.Id))
	h.assertClean(ctx, "stop-pod/network-detached", false, true) // VM and network are gone
	h.crash("remove-pod/containers-removed", func(ctx context.Context, d *env) error {
		_, err := d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.Id})
		return err
	})
	h.removeAll(ctx)
	if pods, err := h.d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 0 {
		t.Errorf("pods left after removal: %v, %v", pods, err)
	}
	h.assertClean(ctx, "remove-pod/containers-removed (then removed)", false, false)
}
