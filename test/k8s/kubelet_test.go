package k8s

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// The static pods' names as kubelet reports them: <name>-<node>.
var (
	appPod      = "vm-app-" + nodeName
	restartsPod = "vm-restarts-" + nodeName
	hostNetPod  = "host-net-" + nodeName
)

// TestKubelet runs the static pods under a kubelet with cocoond as its
// runtime and the API server double as its API server, stats from cgroups
// (cAdvisor) first, then restarts kubelet with PodAndContainerStatsFromCRI
// over the same running pods, then removes the manifests and checks that
// nothing is left.
func TestKubelet(t *testing.T) {
	total := time.Now()
	n := startNode(t)
	n.startKubelet(t, false)

	written := time.Now()
	n.writeManifest(t, "vm-app", vmApp)
	n.writeManifest(t, "vm-restarts", vmRestarts)

	t.Run("VMPodReady", func(t *testing.T) {
		p := n.waitPod(t, appPod, 4*time.Minute, func(p *pod) string {
			if st, _ := p.condition("Ready"); st != "True" {
				return "pod not Ready"
			}
			return ""
		})
		_, at := p.condition("Ready")
		t.Logf("timing: VM pod static manifest to Ready: %v (kubelet's Ready transition at %v after the write)",
			time.Since(written).Round(time.Millisecond), at.Sub(written.Truncate(time.Second)).Round(time.Second))
	})

	t.Run("InitContainer", func(t *testing.T) {
		p := n.waitPod(t, appPod, time.Minute, nil)
		init := p.initContainer("init")
		if init == nil || init.State.Terminated == nil || init.State.Terminated.ExitCode != 0 || init.State.Terminated.Reason != "Completed" {
			t.Fatalf("init container status %+v, want terminated with exit 0, Completed", init)
		}
	})

	t.Run("EmptyDirShared", func(t *testing.T) {
		// reader printed what init and writer wrote into the shared emptyDir.
		id := n.containerID(t, appPod, "reader")
		out, err := n.crictl("exec", id, "cat", "/work/init", "/work/shared")
		if err != nil || out != "init-ran\nfrom-writer\n" {
			t.Fatalf("reader sees %q (%v) in the emptyDir, want init's and writer's lines", out, err)
		}
		logs, err := n.crictl("logs", id)
		if err != nil || !strings.Contains(logs, "init-ran\nfrom-writer") {
			t.Fatalf("reader's log %q (%v), want both lines", logs, err)
		}
	})

	t.Run("ReadinessProbe", func(t *testing.T) {
		writer := n.containerID(t, appPod, "writer")
		if _, err := n.crictl("exec", writer, "rm", "/work/ready"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n.waitPod(t, appPod, time.Minute, func(p *pod) string {
			if st, _ := p.condition("Ready"); st != "False" || p.container("writer").Ready {
				return "pod still Ready after its readiness file went"
			}
			return ""
		})
		t.Logf("timing: readiness failure seen in %v", time.Since(start).Round(time.Millisecond))
		if _, err := n.crictl("exec", writer, "touch", "/work/ready"); err != nil {
			t.Fatal(err)
		}
		p := n.waitPod(t, appPod, time.Minute, func(p *pod) string {
			if st, _ := p.condition("Ready"); st != "True" {
				return "pod not Ready again"
			}
			return ""
		})
		for _, c := range p.Status.ContainerStatuses {
			if c.RestartCount != 0 {
				t.Errorf("%s restarted %d times; a readiness failure or a passing liveness probe must not restart it", c.Name, c.RestartCount)
			}
		}
	})

	t.Run("LivenessRestart", func(t *testing.T) {
		start := time.Now()
		p := n.waitPod(t, restartsPod, 4*time.Minute, func(p *pod) string {
			c := p.container("liveness")
			if c == nil || c.RestartCount < 1 || c.State.Running == nil {
				return "liveness not restarted and running"
			}
			return ""
		})
		c := p.container("liveness")
		t.Logf("timing: liveness restart seen %v after waiting; lastState %+v", time.Since(start).Round(time.Millisecond), c.LastState.Terminated)
		if c.LastState.Terminated == nil {
			t.Errorf("liveness restarted without a terminated last state: %+v", c)
		}
	})

	t.Run("OOMKilled", func(t *testing.T) {
		p := n.waitPod(t, restartsPod, 3*time.Minute, func(p *pod) string {
			c := p.container("oom")
			if c == nil || c.RestartCount < 1 || c.LastState.Terminated == nil {
				return "oom not restarted yet"
			}
			return ""
		})
		c := p.container("oom")
		if c.LastState.Terminated.Reason != "OOMKilled" || c.LastState.Terminated.ExitCode != 137 {
			t.Fatalf("oom's last state %+v, want OOMKilled with exit code 137", c.LastState.Terminated)
		}
		t.Logf("oom: restartCount %d, last state %+v", c.RestartCount, *c.LastState.Terminated)
	})

	// The hostNetwork pod stays to the end: its stats, its cgroup and its
	// log across a cocoond crash are checked with the VM pods'.
	hostPort := freePort()
	t.Run("HostNetworkPod", func(t *testing.T) {
		n.writeManifest(t, "host-net", fmt.Sprintf(hostNet, hostPort))
		start := time.Now()
		n.waitPod(t, hostNetPod, 2*time.Minute, readyPod)
		t.Logf("timing: host pod static manifest to Ready: %v", time.Since(start).Round(time.Millisecond))
		if body := hostPortGet(t, hostPort); body != "host-net-ok\n" {
			t.Fatalf("the hostNetwork pod served %q on the host's port %d", body, hostPort)
		}
	})

	t.Run("HostPIDPod", func(t *testing.T) {
		n.writeManifest(t, "host-pid", hostPID)
		n.waitPod(t, "host-pid-"+nodeName, 2*time.Minute, readyPod)
		// The test's own PID is a host process the pod must see.
		out, err := n.crictl("exec", n.containerID(t, "host-pid-"+nodeName, "ps"), "cat", fmt.Sprintf("/proc/%d/cmdline", os.Getpid()))
		if err != nil || !strings.Contains(out, "k8s.test") {
			t.Fatalf("the hostPID pod does not see the test process %d: %q %v", os.Getpid(), out, err)
		}
		uid := n.waitPod(t, "host-pid-"+nodeName, time.Minute, nil).Metadata.UID
		n.removeManifest(t, "host-pid")
		n.waitSandboxStopped(t, uid)
	})

	t.Run("RuntimeClassPod", func(t *testing.T) { n.checkRuntimeClassPod(t) })

	t.Run("KubeletAndCrictlAgree", func(t *testing.T) { n.checkCrictlAgrees(t) })

	t.Run("VMInPodCgroup", func(t *testing.T) { n.checkPodCgroup(t, appPod) })

	t.Run("HostPodInPodCgroup", func(t *testing.T) {
		// /proc/<pid>/cmdline separates arguments with NULs.
		n.checkPodCgroup(t, hostNetPod, processesMentioning(fmt.Sprintf("httpd\x00-f\x00-p\x00127.0.0.1:%d\x00", hostPort))...)
	})

	t.Run("StatsFromCadvisor", func(t *testing.T) { n.checkSummary(t, false) })

	// The same pods, now with stats from CRI: kubelet restarts over running
	// pods, as on a real node, and must not restart them.
	if err := n.stopKubelet(); err != nil {
		t.Error(err)
	}
	n.startKubelet(t, true)

	t.Run("StatsFromCRI", func(t *testing.T) {
		n.waitPod(t, appPod, 2*time.Minute, readyPod)
		n.checkSummary(t, true)
	})

	t.Run("CrictlStats", func(t *testing.T) { n.checkCrictlStats(t) })

	t.Run("NoRestartAcrossKubeletRestart", func(t *testing.T) {
		for _, name := range []string{appPod, hostNetPod} {
			p := n.waitPod(t, name, time.Minute, readyPod)
			for _, c := range p.Status.ContainerStatuses {
				if c.RestartCount != 0 {
					t.Errorf("%s/%s restarted %d times across a kubelet restart", name, c.Name, c.RestartCount)
				}
			}
		}
	})

	t.Run("PodsSurviveCocoondCrash", func(t *testing.T) { n.checkCocoondCrash(t, hostPort) })

	t.Run("ManifestsRemovedLeaveNothing", func(t *testing.T) { n.checkRemoval(t) })

	t.Logf("timing: whole kubelet test %v", time.Since(total).Round(time.Second))
}

func readyPod(p *pod) string {
	if st, _ := p.condition("Ready"); st != "True" {
		return "pod not Ready"
	}
	return ""
}

// waitPod polls /pods until the named pod exists and notYet (if any) says
// nothing is missing, and returns it.
func (n *node) waitPod(t *testing.T, name string, timeout time.Duration, notYet func(*pod) string) *pod {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var why string
		var pods podList
		if err := n.get("/pods", &pods); err != nil {
			why = err.Error()
		} else {
			why = "not in /pods"
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.Metadata.Name != name {
					continue
				}
				why = ""
				if notYet != nil {
					why = notYet(p)
				}
				if why == "" {
					return p
				}
				j, _ := json.Marshal(p.Status)
				why += ": " + string(j)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after %v: %s\nkubelet log:\n%s", name, timeout, why, n.kubeletLogTail())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// containerID is the CRI id of a pod's container, from kubelet's status
// ("<runtime>://<id>").
func (n *node) containerID(t *testing.T, podName, container string) string {
	t.Helper()
	p := n.waitPod(t, podName, time.Minute, func(p *pod) string {
		if c := p.container(container); c == nil || c.ContainerID == "" {
			return container + " has no id yet"
		}
		return ""
	})
	_, id, _ := strings.Cut(p.container(container).ContainerID, "://")
	return id
}

func (n *node) removeManifest(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.manifests, name+".yaml")); err != nil {
		t.Fatal(err)
	}
}

// checkCrictlAgrees compares kubelet's /pods with cocoond's pods and
// containers as crictl lists them.
func (n *node) checkCrictlAgrees(t *testing.T) {
	var pods podList
	if err := n.get("/pods", &pods); err != nil {
		t.Fatal(err)
	}
	var sandboxes crictlPods
	if err := n.crictlJSON(&sandboxes, "pods", "--state", "ready"); err != nil {
		t.Fatal(err)
	}
	var ctrs crictlContainers
	if err := n.crictlJSON(&ctrs, "ps", "--state", "running"); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != len(sandboxes.Items) {
		t.Errorf("kubelet has %d pods, crictl %d ready sandboxes", len(pods.Items), len(sandboxes.Items))
	}
	for _, p := range pods.Items {
		var sandboxID string
		for _, s := range sandboxes.Items {
			if s.Metadata.UID == p.Metadata.UID {
				sandboxID = s.ID
			}
		}
		if sandboxID == "" {
			t.Errorf("kubelet's pod %s (uid %s) has no ready sandbox in crictl pods", p.Metadata.Name, p.Metadata.UID)
			continue
		}
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Running == nil {
				continue
			}
			_, id, _ := strings.Cut(c.ContainerID, "://")
			found := false
			for _, cc := range ctrs.Containers {
				if cc.ID == id {
					found = true
					if cc.PodSandboxID != sandboxID || cc.Metadata.Name != c.Name || cc.Metadata.Attempt != c.RestartCount {
						t.Errorf("crictl ps has %s as %s/%s attempt %d, kubelet as %s/%s restart %d",
							id, cc.PodSandboxID, cc.Metadata.Name, cc.Metadata.Attempt, sandboxID, c.Name, c.RestartCount)
					}
				}
			}
			if !found {
				t.Errorf("kubelet's running container %s/%s (%s) is not running in crictl ps", p.Metadata.Name, c.Name, id)
			}
		}
	}
	t.Logf("crictl: %d ready sandboxes, %d running containers; kubelet: %d pods", len(sandboxes.Items), len(ctrs.Containers), len(pods.Items))
}

// podRecord reads cocoond's record of a pod: its state dir's
// pods/<id>.json, {"version":N,"data":<the pod>}.
func (n *node) podRecord(t *testing.T, sandboxID string) map[string]json.RawMessage {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(n.work, "lib", "*", "pods", sandboxID+".json"))
	more, _ := filepath.Glob(filepath.Join(n.work, "lib", "pods", sandboxID+".json"))
	matches = append(matches, more...)
	if len(matches) != 1 {
		t.Fatalf("cocoond's record of pod %s: found %v", sandboxID, matches)
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(data, &env); err != nil || env.Data["id"] == nil {
		t.Fatalf("cocoond's record of pod %s is not {version, data: pod}: %v\n%s", sandboxID, err, data)
	}
	return env.Data
}

// waitSandboxStopped waits until cocoond has no ready sandbox for the pod
// uid (kubelet stops a removed static pod's sandbox asynchronously).
func (n *node) waitSandboxStopped(t *testing.T, uid string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var sandboxes crictlPods
		err := n.crictlJSON(&sandboxes, "pods", "--state", "ready")
		ready := err != nil
		for _, s := range sandboxes.Items {
			ready = ready || s.Metadata.UID == uid
		}
		if !ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod uid %s still has a ready sandbox a minute after its manifest went (%v)", uid, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (n *node) sandboxID(t *testing.T, uid string) string {
	t.Helper()
	var sandboxes crictlPods
	if err := n.crictlJSON(&sandboxes, "pods", "--state", "ready"); err != nil {
		t.Fatal(err)
	}
	for _, s := range sandboxes.Items {
		if s.Metadata.UID == uid {
			return s.ID
		}
	}
	t.Fatalf("no ready sandbox for pod uid %s", uid)
	return ""
}

// checkPodCgroup checks that the pod's sandbox processes (a VM pod's VMM and
// its helpers, a host pod's agent) and the extra pids given sit in the pod
// cgroup kubelet made (<cgroupRoot>/kubepods/<qos>/pod<uid>), in every
// hierarchy. It runs when cocoond records a cgroup for the pod.
func (n *node) checkPodCgroup(t *testing.T, name string, extra ...string) {
	p := n.waitPod(t, name, time.Minute, readyPod)
	rec := n.podRecord(t, n.sandboxID(t, p.Metadata.UID))
	if !hasCgroup(rec) {
		t.Skip("skipping: " + noPodCgroup)
	}
	var vm struct {
		Pid     int `json:"pid"`
		Helpers []struct {
			Pid int `json:"pid"`
		} `json:"helpers"`
	}
	if err := json.Unmarshal(rec["vm"], &vm); err != nil || vm.Pid == 0 {
		t.Fatalf("the pod record's vm %s: %v", rec["vm"], err)
	}
	pids := []int{vm.Pid}
	for _, h := range vm.Helpers {
		pids = append(pids, h.Pid)
	}
	for _, e := range extra {
		pid, _ := strconv.Atoi(strings.Fields(e)[0])
		pids = append(pids, pid)
	}
	want := cgroupRoot + "/kubepods/"
	podDir := "/pod" + p.Metadata.UID + "/"
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) != 3 || parts[1] == "" && parts[2] == "/" {
				continue // an unused v2 hierarchy on a hybrid host
			}
			if !strings.HasPrefix(parts[2], want) || !strings.Contains(parts[2], podDir) {
				t.Errorf("pid %d is in %s:%s, want below kubelet's %s...%s", pid, parts[1], parts[2], want, podDir)
			}
		}
	}
	if len(extra) == 0 && string(rec["kind"]) == `"host"` {
		t.Errorf("no workload process of host pod %s to check", name)
	}
	t.Logf("pids %v (sandbox, helpers, workload) are in the pod cgroup of %s", pids, name)
}

// noPodCgroup is why the pod cgroup checks skip on a cocoond without them.
const noPodCgroup = "cocoond records no pod cgroup, so the VM is not in kubelet's pod cgroup (pod cgroups come with the cgroups branch, issue 14)"

func hasCgroup(rec map[string]json.RawMessage) bool {
	return len(rec["cgroup"]) > 0 && string(rec["cgroup"]) != "null"
}

// reportsPodNetwork says whether cocoond's PodSandboxStats carries network
// usage for the pod (crictl statsp).
func (n *node) reportsPodNetwork(t *testing.T, sandboxID string) bool {
	t.Helper()
	var st struct {
		Stats []struct {
			Linux struct {
				Network *struct {
					DefaultInterface *struct {
						Name string `json:"name"`
					} `json:"defaultInterface"`
				} `json:"network"`
			} `json:"linux"`
		} `json:"stats"`
	}
	if err := n.crictlJSON(&st, "statsp", "--id", sandboxID); err != nil {
		t.Fatal(err)
	}
	return len(st.Stats) == 1 && st.Stats[0].Linux.Network != nil && st.Stats[0].Linux.Network.DefaultInterface != nil
}

// checkSummary checks /stats/summary: every pod and container of the VM
// pods has CPU, memory working set and filesystem usage, and network usage
// where kubelet has a way to get it.
//
// Pod CPU and memory: without the CRI gate kubelet reads them from the pod
// cgroup (cAdvisor), which holds the VM only with pod cgroups. Pod network:
// without the gate kubelet takes it from cAdvisor only for a container its
// containerd or CRI-O handlers label as a pod's sandbox, so never for
// cocoon; with the gate it comes from cocoond's PodSandboxStats.
func (n *node) checkSummary(t *testing.T, fromCRI bool) {
	app := n.waitPod(t, appPod, time.Minute, readyPod)
	sandboxID := n.sandboxID(t, app.Metadata.UID)
	want := wantStats{podCPUMemory: fromCRI || hasCgroup(n.podRecord(t, sandboxID))}
	if !want.podCPUMemory {
		t.Logf("NOT CHECKED: pod CPU and memory from cAdvisor: %s", noPodCgroup)
	}
	if fromCRI {
		want.podNetwork = n.reportsPodNetwork(t, sandboxID)
		if !want.podNetwork {
			t.Logf("NOT CHECKED: pod network from CRI: cocoond's PodSandboxStats carries no network usage (cri/sandbox_stats.go fills CPU, memory and processes only)")
		}
	} else {
		t.Logf("NOT CHECKED: pod network from cAdvisor: kubelet has none for a runtime cAdvisor cannot label")
	}
	var s summary
	// Stats appear once kubelet has collected them: poll briefly.
	deadline := time.Now().Add(90 * time.Second)
	var problems []string
	for {
		if err := n.get("/stats/summary", &s); err != nil {
			problems = []string{err.Error()}
		} else {
			problems = summaryProblems(&s, want)
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second)
	}
	for _, p := range problems {
		t.Error(p)
	}
	for _, p := range s.Pods {
		if p.PodRef.Name == appPod || p.PodRef.Name == hostNetPod {
			j, _ := json.Marshal(p)
			t.Logf("/stats/summary for %s (PodAndContainerStatsFromCRI=%t): %s", p.PodRef.Name, fromCRI, j)
		}
	}
}

// wantStats says which pod-level stats kubelet can have for cocoon's pods.
type wantStats struct {
	podCPUMemory bool
	podNetwork   bool
}

// summaryPod is what /stats/summary must hold for one of the test's pods. A
// hostNetwork pod has no network of its own to report.
type summaryPod struct {
	containers []string
	volume     string // an emptyDir with usage, or ""
	vm         bool
}

// summaryProblems lists what the summary lacks.
func summaryProblems(s *summary, want wantStats) []string {
	var out []string
	if s.Node.Fs == nil || s.Node.Fs.CapacityBytes == nil || *s.Node.Fs.CapacityBytes == 0 {
		out = append(out, "node fs stats missing")
	}
	if s.Node.Runtime == nil || s.Node.Runtime.ImageFs == nil || s.Node.Runtime.ImageFs.CapacityBytes == nil || *s.Node.Runtime.ImageFs.CapacityBytes == 0 {
		out = append(out, "node image fs stats missing")
	}
	pods := map[string]summaryPod{
		appPod:      {containers: []string{"writer", "reader"}, volume: "work", vm: true},
		restartsPod: {containers: []string{"liveness", "oom"}, volume: "work", vm: true},
		hostNetPod:  {containers: []string{"web", "ticker"}},
	}
	for _, p := range s.Pods {
		sp, ok := pods[p.PodRef.Name]
		if !ok {
			continue
		}
		delete(pods, p.PodRef.Name)
		if want.podCPUMemory && (p.CPU == nil || positive(p.CPU.UsageCoreNanoSeconds) == "") {
			out = append(out, p.PodRef.Name+": no pod CPU usage")
		}
		if want.podCPUMemory && (p.Memory == nil || positive(p.Memory.WorkingSetBytes) == "") {
			out = append(out, p.PodRef.Name+": no pod memory working set")
		}
		if p.EphemeralStorage == nil || p.EphemeralStorage.UsedBytes == nil {
			out = append(out, p.PodRef.Name+": no pod ephemeral-storage usage")
		}
		if sp.volume != "" && !hasVolume(p.VolumeStats, sp.volume) {
			out = append(out, p.PodRef.Name+": no usage for the emptyDir volume")
		}
		if sp.vm && want.podNetwork && (p.Network == nil || len(p.Network.Interfaces) == 0) {
			out = append(out, p.PodRef.Name+": no pod network stats")
		}
		for _, name := range sp.containers {
			c := findContainer(p.Containers, name)
			switch {
			case c == nil:
				out = append(out, p.PodRef.Name+"/"+name+": no container stats")
			case c.CPU == nil || positive(c.CPU.UsageCoreNanoSeconds) == "":
				out = append(out, p.PodRef.Name+"/"+name+": no CPU usage")
			case c.Memory == nil || positive(c.Memory.WorkingSetBytes) == "":
				out = append(out, p.PodRef.Name+"/"+name+": no memory working set")
			case c.Rootfs == nil || c.Rootfs.UsedBytes == nil:
				out = append(out, p.PodRef.Name+"/"+name+": no rootfs usage")
			case c.Logs == nil || c.Logs.UsedBytes == nil:
				out = append(out, p.PodRef.Name+"/"+name+": no log usage")
			}
		}
	}
	for name := range pods {
		out = append(out, name+": not in /stats/summary")
	}
	return out
}

func positive(v *uint64) string {
	if v == nil || *v == 0 {
		return ""
	}
	return strconv.FormatUint(*v, 10)
}

func hasVolume(vols []volumeStats, name string) bool {
	for _, v := range vols {
		if v.Name == name && v.UsedBytes != nil {
			return true
		}
	}
	return false
}

func findContainer(cs []containerStats, name string) *containerStats {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

// checkCrictlStats sets kubelet's /stats/summary for the VM app pod and the
// host pod beside crictl stats taken right after: the same containers, and
// cumulative CPU that only grows from kubelet's reading to crictl's.
func (n *node) checkCrictlStats(t *testing.T) {
	var s summary
	if err := n.get("/stats/summary", &s); err != nil {
		t.Fatal(err)
	}
	var cs crictlStats
	if err := n.crictlJSON(&cs, "stats"); err != nil {
		t.Fatal(err)
	}
	n.compareStats(t, &s, &cs, appPod, "writer", "reader")
	n.compareStats(t, &s, &cs, hostNetPod, "web", "ticker")
}

func (n *node) compareStats(t *testing.T, s *summary, cs *crictlStats, podName string, containers ...string) {
	t.Helper()
	p := n.waitPod(t, podName, time.Minute, readyPod)
	var ps *podStats
	for i := range s.Pods {
		if s.Pods[i].PodRef.UID == p.Metadata.UID {
			ps = &s.Pods[i]
		}
	}
	if ps == nil {
		t.Errorf("%s not in /stats/summary", podName)
		return
	}
	for _, name := range containers {
		_, id, _ := strings.Cut(p.container(name).ContainerID, "://")
		kc := findContainer(ps.Containers, name)
		if kc == nil || kc.CPU == nil || kc.CPU.UsageCoreNanoSeconds == nil || kc.Memory == nil || kc.Memory.WorkingSetBytes == nil {
			t.Errorf("%s: kubelet has no CPU/memory for it", name)
			continue
		}
		found := false
		for _, c := range cs.Stats {
			if c.Attributes.ID != id {
				continue
			}
			found = true
			t.Logf("%s/%s: kubelet cpu %d ns, working set %d B | crictl stats cpu %d ns, working set %d B, writable layer %d B",
				podName, name, *kc.CPU.UsageCoreNanoSeconds, *kc.Memory.WorkingSetBytes,
				c.CPU.UsageCoreNanoSeconds.Value, c.Memory.WorkingSetBytes.Value, c.WritableLayer.UsedBytes.Value)
			if uint64(c.CPU.UsageCoreNanoSeconds.Value) < *kc.CPU.UsageCoreNanoSeconds {
				t.Errorf("%s: crictl's cumulative CPU %d is below kubelet's earlier reading %d", name, c.CPU.UsageCoreNanoSeconds.Value, *kc.CPU.UsageCoreNanoSeconds)
			}
			if c.Memory.WorkingSetBytes.Value == 0 {
				t.Errorf("%s: crictl stats shows no working set", name)
			}
		}
		if !found {
			t.Errorf("%s (%s) is not in crictl stats", name, id)
		}
	}
}

// checkRemoval removes every manifest and waits until kubelet and cocoond
// have no pods left, then checks the host: no VM process, network
// namespace, veth on the test bridge, mount, pod cgroup or state file.
func (n *node) checkRemoval(t *testing.T) {
	var pods podList
	if err := n.get("/pods", &pods); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(n.manifests)
	start := time.Now()
	for _, e := range entries {
		if err := os.Remove(filepath.Join(n.manifests, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	// Stopping is prompt; kubelet removes a deleted pod's sandboxes in its
	// container GC, which runs once a minute.
	deadline := time.Now().Add(3 * time.Minute)
	var stoppedAt time.Duration
	for {
		var left crictlPods
		err := n.crictlJSON(&left, "pods")
		var ready int
		for _, p := range left.Items {
			if p.State == "SANDBOX_READY" {
				ready++
			}
		}
		if err == nil && ready == 0 && stoppedAt == 0 {
			stoppedAt = time.Since(start)
		}
		if err == nil && len(left.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandboxes still there 3 minutes after their manifests went: %+v (%v)", left.Items, err)
		}
		time.Sleep(time.Second)
	}
	t.Logf("timing: manifests removed -> every sandbox stopped in %v, removed in %v", stoppedAt.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	for _, dir := range []string{"run/vm", "run/netns", "run/sandboxes"} {
		if left := entriesUnder(filepath.Join(n.work, dir)); len(left) > 0 {
			t.Errorf("left under %s: %v", dir, left)
		}
	}
	for _, f := range []string{"pods", "containers"} {
		matches, _ := filepath.Glob(filepath.Join(n.work, "lib", "*", f, "*.json"))
		more, _ := filepath.Glob(filepath.Join(n.work, "lib", f, "*.json"))
		if all := append(matches, more...); len(all) > 0 {
			t.Errorf("cocoond still has %s records: %v", f, all)
		}
	}
	if procs := processesMentioning(n.work + "/run/"); len(procs) > 0 {
		t.Errorf("processes of removed pods still run: %v", procs)
	}
	if ms := mountsUnder(n.work + "/run/"); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	if br, err := netlink.LinkByName("cocoontest0"); err == nil {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				t.Errorf("%s is still on the pods' bridge", l.Attrs().Name)
			}
		}
	}
	// kubelet removes a deleted pod's cgroup in its housekeeping.
	for _, p := range pods.Items {
		var leftCgroups []string
		deadline := time.Now().Add(30 * time.Second)
		for {
			leftCgroups = podCgroupsOf(p.Metadata.UID)
			if len(leftCgroups) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		if len(leftCgroups) > 0 {
			t.Errorf("pod %s's cgroups left: %v", p.Metadata.Name, leftCgroups)
		}
	}
}

func entriesUnder(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// processesMentioning lists live processes whose command line contains s.
func processesMentioning(s string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z") {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(cmdline), s) {
			out = append(out, e.Name()+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return out
}

// mountsUnder lists mount points below dir.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// podCgroupsOf lists the cgroup directories kubelet made for a pod uid.
func podCgroupsOf(uid string) []string {
	var out []string
	for _, mnt := range cgroupMounts() {
		for _, qos := range []string{"", "burstable", "besteffort"} {
			d := filepath.Join(mnt, cgroupRoot, "kubepods", qos, "pod"+uid)
			if _, err := os.Stat(d); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// checkCocoondCrash kills cocoond with SIGKILL under a running kubelet and
// starts it again over the same state. The VM pod and the host pod keep
// running: kubelet restarts no container and sees the same container ids,
// the host pod still serves on its port, the VM pod still answers exec,
// and the ticker's CRI log has every tick, in order, across the crash.
func (n *node) checkCocoondCrash(t *testing.T, hostPort int) {
	before := map[string]*pod{}
	for _, name := range []string{appPod, hostNetPod} {
		before[name] = n.waitPod(t, name, time.Minute, readyPod)
	}
	logPath := filepath.Join(n.work, "pod-logs", "default_"+hostNetPod+"_"+before[hostNetPod].Metadata.UID, "ticker", "0.log")
	ticksBefore := waitTicks(t, logPath, 1)
	crashed := time.Now()
	took := n.crashCocoond(t)
	t.Logf("timing: cocoond SIGKILLed and answering again in %v", took.Round(time.Millisecond))

	// 6 s for kubelet's PLEG (1 s relist) to see the new cocoond's view.
	time.Sleep(6 * time.Second)
	for name, b := range before {
		after := n.waitPod(t, name, time.Minute, readyPod)
		for _, c := range b.Status.ContainerStatuses {
			a := after.container(c.Name)
			if a == nil || a.ContainerID != c.ContainerID || a.RestartCount != c.RestartCount || a.State.Running == nil {
				t.Errorf("%s/%s after the crash: %+v, before: %+v", name, c.Name, a, c)
			}
		}
	}
	n.checkCrictlAgrees(t)
	if body := hostPortGet(t, hostPort); body != "host-net-ok\n" {
		t.Errorf("after the crash the host pod served %q", body)
	}
	if out, err := n.crictl("exec", n.containerID(t, appPod, "reader"), "cat", "/work/init"); err != nil || strings.TrimSpace(out) != "init-ran" {
		t.Errorf("exec into the VM pod after the crash: %q %v", out, err)
	}
	t.Logf("timing: cocoond SIGKILL -> both pods checked running and unrestarted in %v", time.Since(crashed).Round(time.Millisecond))

	// The ticks made before, during and after the crash, then 30 more.
	ticksAfter := waitTicks(t, logPath, ticksBefore+int(time.Since(crashed)/(200*time.Millisecond))+30)
	t.Logf("log continuity: %s holds ticks 0..%d in order, none missing; %d were in it before the crash", logPath, ticksAfter-1, ticksBefore)
}

var tickLine = regexp.MustCompile(`^\S+ stdout F tick-(\d+)$`)

// waitTicks waits until the CRI log at path holds at least n ticks, checks
// that they are tick-0, tick-1, ... with none missing or reordered, and
// returns how many there are.
func waitTicks(t *testing.T, path string, n int) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		data, _ := os.ReadFile(path)
		var got int
		for _, line := range strings.Split(string(data), "\n") {
			m := tickLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			if m[1] != strconv.Itoa(got) {
				t.Fatalf("log line for tick %d is %q: ticks were lost or reordered", got, line)
			}
			got++
		}
		if got >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d ticks in %s after a minute", got, n, path)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// hostPortGet fetches /index.html from the host's loopback port, retrying
// for 10 s.
func hostPortGet(t *testing.T, port int) string {
	t.Helper()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) + "/index.html"
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var body string
		if body, err = httpGet(url); err == nil {
			return body
		}
	}
	t.Fatalf("GET %s: %v", url, err)
	return ""
}
