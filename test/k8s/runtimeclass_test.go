package k8s

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The RuntimeClass the API server double holds, and the handler it names:
// cocoond's handler of kind host in its default config (config/defaults.toml).
const (
	hostRuntimeClassName = "cocoon-host-class"
	hostRuntimeHandler   = "cocoon-host"
)

// hostRuntimeClass is the node.k8s.io/v1 RuntimeClass kubelet's RuntimeClass
// manager lists from the double.
func hostRuntimeClass() map[string]any {
	return map[string]any{
		"apiVersion": "node.k8s.io/v1",
		"kind":       "RuntimeClass",
		"metadata":   map[string]any{"name": hostRuntimeClassName},
		"handler":    hostRuntimeHandler,
	}
}

// sandboxInspect is what crictl inspectp -o json shows of a cocoon pod: the
// CRI status, and cocoond's verbose info (cri/sandbox_status.go).
type sandboxInspect struct {
	Status struct {
		ID             string `json:"id"`
		State          string `json:"state"`
		RuntimeHandler string `json:"runtimeHandler"`
		Network        struct {
			IP string `json:"ip"`
		} `json:"network"`
		Linux struct {
			Namespaces struct {
				Options struct {
					Network string `json:"network"`
				} `json:"options"`
			} `json:"namespaces"`
		} `json:"linux"`
	} `json:"status"`
	Info struct {
		Netns string `json:"netns"`
		VM    struct {
			Driver string `json:"driver"`
			Pid    int    `json:"pid"`
		} `json:"vm"`
	} `json:"info"`
}

// checkRuntimeClassPod runs a static pod whose runtimeClassName resolves,
// through kubelet's RuntimeClass manager and the double, to cocoond's host
// handler; checks that cocoond ran it as a host pod (no VM) in a network
// namespace of its own with a pod IP from CNI that serves, and that
// removing its manifest stops it.
func (n *node) checkRuntimeClassPod(t *testing.T) {
	var info struct {
		RuntimeHandlers []struct {
			Name string `json:"name"`
		} `json:"runtimeHandlers"`
	}
	if err := n.crictlJSON(&info, "info"); err != nil {
		t.Fatal(err)
	}
	var handlers []string
	for _, h := range info.RuntimeHandlers {
		handlers = append(handlers, h.Name)
	}
	if !strings.Contains(" "+strings.Join(handlers, " ")+" ", " "+hostRuntimeHandler+" ") {
		t.Fatalf("cocoond lists runtime handlers %q, without %q", handlers, hostRuntimeHandler)
	}

	const name = "rc-host-" + nodeName
	port := freePort()
	start := time.Now()
	n.writeManifest(t, "rc-host", fmt.Sprintf(rcHost, port, port))
	// On a failure half-way the pod goes too, and is stopped before the
	// later subtests count their pods.
	t.Cleanup(func() {
		err := os.Remove(filepath.Join(n.manifests, "rc-host.yaml"))
		if os.IsNotExist(err) {
			return
		} else if err != nil {
			t.Error(err)
			return
		}
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			if out, err := n.crictl("pods", "--name", name, "--state", "ready", "-q"); err == nil && strings.TrimSpace(out) == "" {
				return
			}
		}
		t.Errorf("%s still has a ready sandbox 2 minutes after its manifest went", name)
	})
	p := n.waitPod(t, name, 2*time.Minute, readyPod)
	t.Logf("timing: RuntimeClass (host handler) pod static manifest to Ready: %v", time.Since(start).Round(time.Millisecond))

	// kubelet went through the API: its mirror pod in the double names the
	// class, and its status patches reached it.
	n.checkMirrorPod(t, name)

	sandboxID := n.sandboxID(t, p.Metadata.UID)
	var in sandboxInspect
	out, err := n.crictl("inspectp", "-o", "json", sandboxID)
	if err == nil {
		err = json.Unmarshal([]byte(out), &in)
	}
	if err != nil {
		t.Fatal(err)
	}
	requests := func() string { return strings.Join(n.api.requests(), "\n  ") }
	if in.Status.RuntimeHandler != hostRuntimeHandler {
		t.Fatalf("the sandbox runs under handler %q, want %q (runtimeClassName %s); kubelet's API requests:\n  %s",
			in.Status.RuntimeHandler, hostRuntimeHandler, hostRuntimeClassName, requests())
	}

	// A host pod: its "VM" is a host-mode cocoon-agent (vm/host), no VMM.
	if in.Info.VM.Driver != "host" || in.Info.VM.Pid == 0 {
		t.Fatalf("cocoond's info for the pod has vm %+v, want the host driver with its agent's pid", in.Info.VM)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", in.Info.VM.Pid))
	if err != nil || !strings.Contains(string(cmdline), "cocoon-agent") {
		t.Fatalf("the host pod's process %d is %q (%v), want cocoon-agent", in.Info.VM.Pid, cmdline, err)
	}
	for _, proc := range processesMentioning(sandboxID) {
		if strings.Contains(proc, "qemu") || strings.Contains(proc, "virtiofsd") {
			t.Errorf("a VM process runs for the host pod: %s", proc)
		}
	}

	// Its own network namespace, from CNI: not the host's, and its
	// container's is the one cocoond recorded.
	if in.Status.Linux.Namespaces.Options.Network != "POD" || in.Info.Netns == "" {
		t.Fatalf("network namespace mode %q, netns %q: want POD and a netns of its own", in.Status.Linux.Namespaces.Options.Network, in.Info.Netns)
	}
	var netnsStat syscall.Stat_t
	if err := syscall.Stat(in.Info.Netns, &netnsStat); err != nil {
		t.Fatal(err)
	}
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ctrNS, err := n.crictl("exec", n.containerID(t, name, "web"), "readlink", "/proc/self/ns/net")
	ctrNS = strings.TrimSpace(ctrNS)
	if err != nil || ctrNS != fmt.Sprintf("net:[%d]", netnsStat.Ino) || ctrNS == hostNS {
		t.Fatalf("the container's network namespace is %q (%v); want the pod's %s (net:[%d]), not the host's %s",
			ctrNS, err, in.Info.Netns, netnsStat.Ino, hostNS)
	}
	ip := net.ParseIP(in.Status.Network.IP)
	if _, cniNet, _ := net.ParseCIDR("10.90.0.0/16"); ip == nil || !cniNet.Contains(ip) {
		t.Fatalf("pod IP %q is not on the test CNI network 10.90.0.0/16 (test/critest/env.sh)", in.Status.Network.IP)
	}
	if p.Status.PodIP != in.Status.Network.IP {
		t.Errorf("kubelet reports pod IP %q, cocoond %q", p.Status.PodIP, in.Status.Network.IP)
	}
	body, err := httpGet("http://" + net.JoinHostPort(ip.String(), strconv.Itoa(port)) + "/")
	if err != nil || body != "rc-host-ok\n" {
		t.Fatalf("the pod's server at its IP %s:%d answered %q (%v)", ip, port, body, err)
	}
	if _, err := httpGet("http://127.0.0.1:" + strconv.Itoa(port) + "/"); err == nil {
		t.Errorf("the pod's server answers on the host's 127.0.0.1:%d: it is in the host's network namespace", port)
	}
	t.Logf("rc-host: handler %s, host agent pid %d, pod IP %s, %s (host %s)", in.Status.RuntimeHandler, in.Info.VM.Pid, ip, ctrNS, hostNS)

	// Removing the manifest stops the pod: out of /pods, its sandbox not
	// ready, its agent gone and its netns removed. (Container GC removes
	// the sandbox later; ManifestsRemovedLeaveNothing checks that.)
	n.removeManifest(t, "rc-host")
	start = time.Now()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		why := n.podStillThere(name, sandboxID, in.Info.VM.Pid, in.Info.Netns)
		if why == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 minutes after its manifest went: %s\nkubelet log:\n%s", why, n.kubeletLogTail())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("timing: RuntimeClass pod manifest removed -> stopped in %v", time.Since(start).Round(time.Millisecond))
}

// checkMirrorPod waits until the double holds kubelet's mirror pod of the
// named static pod, with the RuntimeClass and a Ready condition.
func (n *node) checkMirrorPod(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		why := ""
		mirror := n.api.object("pods", "default", name)
		if mirror == nil {
			why = "no mirror pod"
		} else {
			data, _ := json.Marshal(mirror)
			var m struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
				Spec struct {
					RuntimeClassName string `json:"runtimeClassName"`
				} `json:"spec"`
				Status struct {
					Conditions []struct {
						Type   string `json:"type"`
						Status string `json:"status"`
					} `json:"conditions"`
				} `json:"status"`
			}
			_ = json.Unmarshal(data, &m)
			ready := false
			for _, c := range m.Status.Conditions {
				ready = ready || c.Type == "Ready" && c.Status == "True"
			}
			switch {
			case m.Metadata.Annotations["kubernetes.io/config.mirror"] == "":
				why = "not a mirror pod: " + string(data)
			case m.Spec.RuntimeClassName != hostRuntimeClassName:
				why = "mirror pod's runtimeClassName is " + m.Spec.RuntimeClassName
			case !ready:
				why = "mirror pod's status is not Ready: " + string(data)
			}
		}
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s; kubelet's API requests:\n  %s", name, why, strings.Join(n.api.requests(), "\n  "))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// podStillThere says what is left of a removed pod, or "".
func (n *node) podStillThere(name, sandboxID string, agentPid int, netns string) string {
	var pods podList
	if err := n.get("/pods", &pods); err != nil {
		return err.Error()
	}
	for _, p := range pods.Items {
		if p.Metadata.Name == name {
			return name + " still in /pods"
		}
	}
	var sandboxes crictlPods
	if err := n.crictlJSON(&sandboxes, "pods", "--state", "ready"); err != nil {
		return err.Error()
	}
	for _, s := range sandboxes.Items {
		if s.ID == sandboxID {
			return "sandbox " + sandboxID + " still ready"
		}
	}
	if syscall.Kill(agentPid, 0) == nil {
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", agentPid)); err == nil && !strings.Contains(string(stat), ") Z") {
			return fmt.Sprintf("host agent %d still running", agentPid)
		}
	}
	if _, err := os.Stat(netns); err == nil {
		return "netns " + netns + " still there"
	}
	return ""
}

func httpGet(url string) (string, error) {
	// Straight to the pod, whatever proxy the environment names.
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(data), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(data), err
}
