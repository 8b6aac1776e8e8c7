// Package k8s runs a real kubelet with cocoond as its only runtime, and
// checks what kubelet sees of cocoon's pods: static pods with probes, init
// containers, shared volumes and memory limits; a pod whose RuntimeClass
// picks cocoond's host handler; kubelet's /pods and /stats/summary;
// crictl's view of the same pods; and that removing the manifests leaves
// nothing behind. kubelet's API server is a double in the test
// (apiserver_test.go): without one kubelet builds no RuntimeClass manager.
package k8s

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// kubeletVersion is the k8s.io/kubernetes pin in kubelet/go.mod; the binary
// carries it in its name so make rebuilds it only when the pin moves.
const kubeletVersion = "v1.36.3"

// nodeName is kubelet's --hostname-override: static pods are <name>-<node>.
const nodeName = "cocoon-k8s"

// cgroupRoot is kubelet's cgroupRoot: its QoS and pod cgroups go below it,
// in a tree of this test's own that teardown removes.
const cgroupRoot = "/cocoon-k8s-test"

var (
	teardownMu sync.Mutex
	teardowns  []func() // run in reverse at exit, on SIGTERM/SIGINT too
)

func onTeardown(f func()) {
	teardownMu.Lock()
	defer teardownMu.Unlock()
	teardowns = append(teardowns, f)
}

func runTeardowns() {
	teardownMu.Lock()
	defer teardownMu.Unlock()
	for i := len(teardowns) - 1; i >= 0; i-- {
		teardowns[i]()
	}
	teardowns = nil
}

func TestMain(m *testing.M) {
	if reason := skipReason(binDir()); reason != "" {
		fmt.Println("k8s: SKIP:", reason)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		runTeardowns()
		os.Exit(2)
	}()
	code := m.Run()
	runTeardowns()
	os.Exit(code)
}

func binDir() string {
	if bin := os.Getenv("COCOON_BIN"); bin != "" {
		return bin
	}
	bin, _ := filepath.Abs("../../bin")
	return bin
}

func kubeletPath(bin string) string {
	return filepath.Join(bin, "kubelet-"+kubeletVersion)
}

// skipReason says why this machine cannot run the kubelet test, or "".
func skipReason(bin string) string {
	if os.Getenv("COCOON_INTEGRATION") == "" {
		return "COCOON_INTEGRATION is not set (make test-k8s sets it)"
	}
	if os.Geteuid() != 0 {
		return "needs root (kubelet and cocoond)"
	}
	for _, b := range []string{kubeletPath(bin), filepath.Join(bin, "cocoond"), filepath.Join(bin, "crictl"),
		filepath.Join(bin, "cocoon-test-images"), "/usr/bin/docker-registry"} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Sprintf("%s missing (make build tools kubelet, make deps)", b)
		}
	}
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		return "COCOON_GUEST_DIR is not set (make test-k8s builds the guest)"
	}
	return ""
}

// node is cocoond (held by node-env.sh) plus one kubelet at a time.
type node struct {
	bin       string
	work      string // env.sh's WORK
	sock      string // cocoond's CRI socket
	manifests string // kubelet's staticPodPath
	root      string // kubelet's --root-dir
	port      int    // kubelet's readOnlyPort (/pods, /stats/summary)

	env    *exec.Cmd
	envIn  io.WriteCloser
	envOut *bufio.Reader // node-env.sh's answers, one line each
	envLog string

	// api is the API server double kubelet's --kubeconfig points at
	// (apiserver_test.go); it outlives a kubelet restart, as a cluster's
	// API server would.
	api *apiServer

	kubelet     *exec.Cmd
	kubeletDone chan struct{} // closed when kubelet has exited
	kubeletLog  string
	kubeletRun  int
}

// startNode starts node-env.sh and waits for its READY line.
func startNode(t *testing.T) *node {
	t.Helper()
	bin := binDir()
	if reason := skipReason(bin); reason != "" {
		t.Skip("skipping: " + reason)
	}
	n := &node{bin: bin}
	logf, err := os.CreateTemp("", "cocoon-k8s-env.*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	n.envLog = logf.Name()
	n.env = exec.Command("bash", "node-env.sh")
	n.env.Env = append(os.Environ(), "BIN="+bin)
	n.env.Stderr = logf
	// Its own process group: a ^C to the test reaches it through teardown,
	// not while it is still needed.
	n.env.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if n.envIn, err = n.env.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := n.env.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := n.env.Start(); err != nil {
		t.Fatal(err)
	}
	onTeardown(func() {
		if err := n.shutdown(); err != nil {
			fmt.Println("k8s: teardown:", err)
		}
	})
	n.envOut = bufio.NewReader(out)
	fields := strings.Fields(n.envAnswer(3 * time.Minute))
	if len(fields) != 3 || fields[0] != "READY" {
		log, _ := os.ReadFile(n.envLog)
		t.Fatalf("node-env.sh did not get ready (said %q):\n%s", fields, log)
	}
	n.work, n.sock = fields[1], fields[2]
	n.manifests = filepath.Join(n.work, "manifests")
	n.root = filepath.Join(n.work, "kubelet")
	for _, d := range []string{n.manifests, n.root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("timing: registry + cocoond ready in %v", time.Since(start).Round(time.Millisecond))
	return n
}

// envAnswer reads node-env.sh's next line, or "" after timeout. A reader
// left behind by a timeout owns envOut from then on: the test is failing.
func (n *node) envAnswer(timeout time.Duration) string {
	answer := make(chan string, 1)
	go func() {
		line, _ := n.envOut.ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		return line
	case <-time.After(timeout):
		return ""
	}
}

// crashCocoond has node-env.sh kill cocoond with SIGKILL and start it again
// over the same state, and returns how long the new one took to answer.
func (n *node) crashCocoond(t *testing.T) time.Duration {
	t.Helper()
	if _, err := io.WriteString(n.envIn, "crash-cocoond\n"); err != nil {
		t.Fatal(err)
	}
	line := n.envAnswer(2 * time.Minute)
	var ms int
	f := strings.Fields(line)
	err := errors.New("no RESTARTED line")
	if len(f) == 2 && f[0] == "RESTARTED" {
		ms, err = strconv.Atoi(f[1])
	}
	if err != nil {
		log, _ := os.ReadFile(n.envLog)
		t.Fatalf("cocoond did not come back after SIGKILL (node-env.sh said %q):\n%s", line, log)
	}
	return time.Duration(ms) * time.Millisecond
}

// shutdown stops kubelet and undoes its root dir mount, then lets
// node-env.sh remove every pod and stop cocoond and the registry; then it
// removes kubelet's cgroups. Its error says what was left behind.
func (n *node) shutdown() error {
	var errs []error
	if err := n.stopKubelet(); err != nil {
		errs = append(errs, err)
	}
	if n.api != nil {
		n.api.close()
		n.api = nil
	}
	// kubelet bind-mounts its root dir onto itself (to make it shared) and
	// leaves that mount when it exits.
	if n.root != "" {
		ms := mountsUnder(n.root)
		for i := len(ms) - 1; i >= 0; i-- {
			if err := syscall.Unmount(ms[i], 0); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", ms[i], err))
			}
		}
	}
	if n.envIn != nil {
		_ = n.envIn.Close()
		done := make(chan error, 1)
		go func() { done <- n.env.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				log, _ := os.ReadFile(n.envLog)
				errs = append(errs, fmt.Errorf("node-env.sh cleanup: %v\n%s", err, log))
			}
		case <-time.After(5 * time.Minute):
			_ = syscall.Kill(-n.env.Process.Pid, syscall.SIGKILL)
			errs = append(errs, errors.New("node-env.sh cleanup took over 5 minutes; killed"))
		}
		n.envIn = nil
	}
	if err := removeCgroupTree(cgroupRoot); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		_ = os.Remove(n.envLog)
	}
	return errors.Join(errs...)
}

// kubeletConfig is the KubeletConfiguration: static pods only, cocoond as
// the runtime, the read-only port for /pods and /stats/summary, short check
// periods so the test does not wait on defaults, and JSON to the API
// server double (kubelet's default is protobuf, which the double does not
// speak).
func (n *node) kubeletConfig(statsFromCRI bool) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
contentType: application/json
staticPodPath: %[1]s
fileCheckFrequency: 1s
syncFrequency: 5s
containerRuntimeEndpoint: unix://%[2]s
cgroupDriver: cgroupfs
cgroupRoot: %[3]s
failSwapOn: false
failCgroupV1: false
address: 127.0.0.1
port: %[4]d
readOnlyPort: %[5]d
healthzPort: 0
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: %[6]s
enforceNodeAllocatable: []
volumeStatsAggPeriod: 5s
featureGates:
  PodAndContainerStatsFromCRI: %[7]t
`, n.manifests, n.sock, cgroupRoot, freePort(), n.port, filepath.Join(n.work, "pod-logs"), statsFromCRI)
}

// startKubelet starts kubelet, with the API server double as its API
// server (started on the first call), and waits until /pods answers.
func (n *node) startKubelet(t *testing.T, statsFromCRI bool) {
	t.Helper()
	n.kubeletRun++
	if n.port == 0 {
		n.port = freePort()
	}
	if n.api == nil {
		n.startAPIServer(t)
	}
	cfg := filepath.Join(n.work, fmt.Sprintf("kubelet-%d.yaml", n.kubeletRun))
	if err := os.WriteFile(cfg, []byte(n.kubeletConfig(statsFromCRI)), 0o644); err != nil {
		t.Fatal(err)
	}
	n.kubeletLog = filepath.Join(n.work, fmt.Sprintf("kubelet-%d.log", n.kubeletRun))
	logf, err := os.Create(n.kubeletLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	n.kubelet = exec.Command(kubeletPath(n.bin), "--config", cfg, "--root-dir", n.root,
		"--kubeconfig", filepath.Join(n.work, "kubeconfig"), "--hostname-override", nodeName, "--v", "2")
	n.kubelet.Stdout, n.kubelet.Stderr = logf, logf
	n.kubelet.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// kubelet refuses a cgroupRoot that is missing in any hierarchy.
	for _, mnt := range cgroupMounts() {
		if err := os.MkdirAll(filepath.Join(mnt, cgroupRoot), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := n.kubelet.Start(); err != nil {
		t.Fatal(err)
	}
	done, cmd := make(chan struct{}), n.kubelet
	n.kubeletDone = done
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(time.Minute)
	for {
		var pods podList
		if err := n.get("/pods", &pods); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("kubelet's /pods did not answer in a minute (%v); log:\n%s", err, n.kubeletLogTail())
		}
		select {
		case <-done:
			t.Fatalf("kubelet exited; log:\n%s", n.kubeletLogTail())
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("timing: kubelet (PodAndContainerStatsFromCRI=%t) serving in %v", statsFromCRI, time.Since(start).Round(time.Millisecond))
}

// startAPIServer starts the API server double, holding the RuntimeClass
// the RuntimeClass pod names, and writes kubelet's kubeconfig for it. What
// kubelet asked of it is logged when the test ends.
func (n *node) startAPIServer(t *testing.T) {
	t.Helper()
	api, err := startAPIServer(map[string][]map[string]any{"runtimeclasses": {hostRuntimeClass()}})
	if err != nil {
		t.Fatal(err)
	}
	n.api = api
	if err := api.writeKubeconfig(filepath.Join(n.work, "kubeconfig")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		t.Logf("kubelet's requests to the API server double (%s):\n  %s", api.addr, strings.Join(api.requests(), "\n  "))
		if miss := api.unknown(); len(miss) > 0 {
			t.Logf("answered 404, no such resource in the double: %v", miss)
		}
	})
}

// stopKubelet stops kubelet; pods keep running in cocoond, as on a real
// node when kubelet restarts.
func (n *node) stopKubelet() error {
	if n.kubelet == nil || n.kubelet.Process == nil {
		return nil
	}
	cmd, done := n.kubelet, n.kubeletDone
	n.kubelet = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("kubelet ignored SIGTERM for 30s")
	}
}

func (n *node) kubeletLogTail() string {
	data, _ := os.ReadFile(n.kubeletLog)
	if len(data) > 8000 {
		data = data[len(data)-8000:]
	}
	return string(data)
}

// get decodes kubelet's JSON answer at path on the read-only port.
func (n *node) get(path string, into any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(n.port)+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, into)
}

// crictl runs crictl against cocoond and returns its stdout.
func (n *node) crictl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.bin, "crictl"),
		append([]string{"--runtime-endpoint", "unix://" + n.sock, "--image-endpoint", "unix://" + n.sock, "--timeout", "60s"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("crictl %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// crictlJSON runs crictl with -o json and decodes its answer.
func (n *node) crictlJSON(into any, args ...string) error {
	out, err := n.crictl(append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(out), into)
}

func (n *node) writeManifest(t *testing.T, name, body string) {
	t.Helper()
	// Written elsewhere and renamed in, so kubelet never reads half a file.
	tmp := filepath.Join(n.work, name+".yaml.tmp")
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.manifests, name+".yaml")); err != nil {
		t.Fatal(err)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// removeCgroupTree removes dir and everything below it in every cgroup
// hierarchy, deepest first (a cgroup directory goes with rmdir only).
func removeCgroupTree(dir string) error {
	var errs []error
	for _, mnt := range cgroupMounts() {
		top := filepath.Join(mnt, dir)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				errs = append(errs, fmt.Errorf("cgroup left behind: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupMounts lists the mount points of every cgroup hierarchy.
func cgroupMounts() []string {
	data, _ := os.ReadFile("/proc/self/mounts")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
			out = append(out, f[1])
		}
	}
	return out
}
