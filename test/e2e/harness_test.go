// Package e2e drives a real cocoond over its real socket with the CRI client,
// against a real registry (Debian's docker-registry) holding the test images.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const registryAddr = "127.0.0.1:5000"

// e2eBridge is the bridge of the tests' CNI network, created by the bridge
// plugin on the first pod.
const e2eBridge = "cocoone2e0"

// env is one throw-away cocoond with its own state under dir.
type env struct {
	dir     string
	bin     string
	socket  string
	metrics string // host:port of /metrics, as the daemon logged it
	cmd     *exec.Cmd
	runtime runtimeapi.RuntimeServiceClient
	images  runtimeapi.ImageServiceClient
}

var (
	leaked bool // teardown found something left running

	sharedOnce sync.Once
	shared     *env
	sharedErr  error

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

func binDir() string {
	if bin := os.Getenv("COCOON_BIN"); bin != "" {
		return bin
	}
	bin, _ := filepath.Abs("../../bin")
	return bin
}

// skipReason says why this machine cannot run the end-to-end tests, or "".
func skipReason(bin string) string {
	if os.Getenv("COCOON_INTEGRATION") == "" {
		return "COCOON_INTEGRATION is not set (make test-integration sets it)"
	}
	if os.Geteuid() != 0 {
		return "needs root (cocoond mounts image layers)"
	}
	for _, b := range []string{filepath.Join(bin, "cocoond"), filepath.Join(bin, "cocoon-test-images"), "/usr/bin/docker-registry", "/bin/busybox"} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Sprintf("%s missing (run make build and make deps)", b)
		}
	}
	return ""
}

func TestMain(m *testing.M) {
	if reason := skipReason(binDir()); reason != "" {
		fmt.Println("e2e: SKIP:", reason)
	}
	// The bridge plugin never deletes its bridge; the last teardown does,
	// after every daemon (and pod) is gone.
	onTeardown(func() {
		if l, err := netlink.LinkByName(e2eBridge); err == nil {
			_ = netlink.LinkDel(l)
		}
		_ = os.RemoveAll("/var/lib/cni/networks/e2e") // host-local's lease dir
	})
	// Pods run without a cgroup_parent get cocoond's default parent, which
	// cocoond keeps (as kubelet keeps /kubepods); the last teardown removes it.
	onTeardown(removeDefaultCgroupParent)
	// A killed test binary must not leave the registry or a daemon behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		runTeardowns()
		os.Exit(2)
	}()
	code := m.Run()
	runTeardowns()
	if leaked && code == 0 {
		code = 1
	}
	os.Exit(code)
}

// requireEnv returns the shared registry + cocoond, starting them on first use.
func requireEnv(t *testing.T) *env {
	t.Helper()
	bin := binDir()
	if reason := skipReason(bin); reason != "" {
		t.Skip("skipping: " + reason)
	}
	sharedOnce.Do(func() { shared, sharedErr = startShared(bin) })
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

func startShared(bin string) (*env, error) {
	dir, err := os.MkdirTemp("", "cocoon-e2e.")
	if err != nil {
		return nil, err
	}
	onTeardown(func() { os.RemoveAll(dir) })
	registryDir := filepath.Join(dir, "registry")
	if out, err := exec.Command(filepath.Join(bin, "cocoon-test-images"), "up", "--addr", registryAddr, "--dir", registryDir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("starting the test registry: %v\n%s", err, out)
	}
	onTeardown(func() { _ = exec.Command(filepath.Join(bin, "cocoon-test-images"), "down", "--dir", registryDir).Run() })
	e, err := startDaemon(bin, filepath.Join(dir, "daemon"))
	if err != nil {
		return nil, err
	}
	onTeardown(func() {
		if err := e.shutdown(); err != nil {
			fmt.Println("e2e: teardown:", err)
			leaked = true
		}
	})
	return e, nil
}

// writeConfig writes a cocoon.toml (and what it points at) for state under
// dir; extra is appended to it (whole sections, e.g. "[debug]\nconsole = true\n").
func writeConfig(bin, dir string, extra ...string) (string, error) {
	for _, d := range []string{"run", "lib", "cni"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	mirrors, err := exec.Command(filepath.Join(bin, "cocoon-test-images"), "registries-conf", "--addr", registryAddr).Output()
	if err != nil {
		return "", fmt.Errorf("registries-conf: %w", err)
	}
	conflist := `{"cniVersion":"1.0.0","name":"e2e","plugins":[{"type":"bridge","bridge":"` + e2eBridge + `","ipam":{"type":"host-local","ranges":[[{"subnet":"10.99.0.0/24"}]]}},{"type":"loopback"}]}`
	files := map[string]string{
		"registries.conf":     string(mirrors),
		"policy.json":         `{"default":[{"type":"insecureAcceptAnything"}]}`,
		"cni/10-e2e.conflist": conflist,
		"cocoon.toml": fmt.Sprintf(`[daemon]
socket = "%[1]s/run/cocoon.sock"
state_dir = "%[1]s/lib"
runtime_dir = "%[1]s/run"
log_level = "debug"
log_format = "json"
[image]
graph_root = "%[1]s/lib/storage"
run_root = "%[1]s/run/storage"
registries_conf = "%[1]s/registries.conf"
registries_conf_dir = ""
signature_policy = "%[1]s/policy.json"
[cni]
conf_dir = "%[1]s/cni"
[runtime]
guest_dir = "%[2]s"
[runtime.handlers.cocoon]
accel = "tcg"
[metrics]
address = "127.0.0.1:0"
`, dir, guestDirOrDefault()) + poolOff(extra) + strings.Join(extra, ""),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, "cocoon.toml"), nil
}

// poolOff turns every handler's warm pool off unless extra configures the
// cocoon handler's: the other tests count VMs, netns and run dirs, which
// warm VMs would add to.
func poolOff(extra []string) string {
	off := "[runtime.handlers.cocoon-clh.pool]\nsize = 0\n"
	if strings.Contains(strings.Join(extra, ""), "[runtime.handlers.cocoon.pool]") {
		return off
	}
	return off + "[runtime.handlers.cocoon.pool]\nsize = 0\n"
}

func startDaemon(bin, dir string, extraConfig ...string) (*env, error) {
	cfg, err := writeConfig(bin, dir, extraConfig...)
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "cocoond.log"))
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, bin: bin, socket: filepath.Join(dir, "run", "cocoon.sock")}
	e.cmd = exec.Command(filepath.Join(bin, "cocoond"), "--config", cfg)
	e.cmd.Stdout, e.cmd.Stderr = logFile, logFile
	// If the test binary dies without tearing down, the daemon goes with it.
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(e.socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = e.stop() // the startup failure is the error to report
			log, _ := os.ReadFile(logFile.Name())
			return nil, fmt.Errorf("cocoond did not create its socket:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The metrics server starts before the CRI socket, so its line is logged.
	if e.metrics, err = loggedMetricsAddress(logFile.Name()); err != nil {
		_ = e.stop()
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		_ = e.stop()
		return nil, err
	}
	e.runtime = runtimeapi.NewRuntimeServiceClient(conn)
	e.images = runtimeapi.NewImageServiceClient(conn)
	return e, nil
}

// loggedMetricsAddress finds the address cocoond bound for /metrics (the
// config asks for port 0) in its JSON log.
func loggedMetricsAddress(logPath string) (string, error) {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		var entry struct{ Msg, Address string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "serving metrics" && entry.Address != "" {
			return entry.Address, nil
		}
	}
	return "", fmt.Errorf("cocoond did not log its metrics address:\n%s", data)
}

// shutdown removes every pod through CRI (their VMs outlive the daemon by
// design), stops the daemon, and fails if any VM of this daemon still runs.
func (e *env) shutdown() error {
	if e.runtime != nil && e.cmd.ProcessState == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		if pods, err := e.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				_, _ = e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id})
			}
		}
		cancel()
	}
	err := e.stop()
	if left := processesUnder(filepath.Join(e.dir, "run", "vm")); len(left) > 0 {
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return errors.Join(err, fmt.Errorf("VMs still running after every pod was removed: %v", left))
	}
	return err
}

// processesUnder lists processes whose command line mentions dir.
func processesUnder(dir string) []int {
	return liveProcesses(func(_, cmdline string) bool { return strings.Contains(cmdline, dir) })
}

// liveProcesses lists non-zombie processes for which match(stat, cmdline) holds.
func liveProcesses(match func(stat, cmdline string) bool) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + en.Name() + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z") {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + en.Name() + "/cmdline")
		if match(string(stat), string(cmdline)) {
			out = append(out, pid)
		}
	}
	return out
}

// stop sends SIGTERM and waits; it reports whether the daemon exited cleanly.
// Pods and their VMs stay (a restart test adopts them again).
func (e *env) stop() error {
	if e.cmd.Process == nil {
		return nil
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- e.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		_ = e.cmd.Process.Kill()
		return fmt.Errorf("cocoond ignored SIGTERM for 15s")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// mountsUnder lists mount points below dir.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			out = append(out, fields[4])
		}
	}
	return out
}

// guestDirOrDefault is the guest the daemon under test boots pods with.
func guestDirOrDefault() string {
	if d := os.Getenv("COCOON_GUEST_DIR"); d != "" {
		return d
	}
	return "/var/lib/cocoon/guest"
}
