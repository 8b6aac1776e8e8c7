package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// debugConsole runs `cocoon debug-console` against the daemon of e with
// stdin piped from script, as an operator's `echo ... | cocoon debug-console`.
func debugConsole(t *testing.T, e *env, script, pod string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.bin, "cocoon"), "debug-console", "--config", filepath.Join(e.dir, "cocoon.toml"), pod)
	cmd.Stdin = strings.NewReader(script)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// TestDebugConsole opens root shells in a pod's VM with the real CLI: the
// shell is in the guest's own root (PID 1 is the agent, /init is there),
// its exit code comes back, pods are found by name and short ID, and a
// daemon on the default configuration refuses.
func TestDebugConsole(t *testing.T) {
	shared := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	if _, err := os.Stat(filepath.Join(shared.bin, "cocoon")); err != nil {
		t.Skip("skipping: the cocoon CLI is not built (make build)")
	}

	// The shared daemon runs on the defaults: the console is off, and says how to turn it on.
	_, stderr, code := debugConsole(t, shared, "echo should-not-run\n", "any-pod")
	if code != 1 || !strings.Contains(stderr, "debug console is disabled: set [debug] console = true in "+filepath.Join(shared.dir, "cocoon.toml")) {
		t.Fatalf("disabled console: exit %d, stderr %q", code, stderr)
	}

	d, err := startDaemon(shared.bin, t.TempDir(), "[debug]\nconsole = true\n")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.shutdown(); err != nil {
			t.Error(err)
		}
	}()
	if _, err := os.Stat(filepath.Join(d.dir, "run", "admin.sock")); err != nil {
		t.Fatalf("no admin socket: %v", err)
	}
	ctx := ctxT(t)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "console", Namespace: "default", Uid: "console-1"},
		Hostname: "console", LogDirectory: t.TempDir(),
	}
	run, err := d.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer d.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId})

	stdout, stderr, code := debugConsole(t, d, "echo hello-from-vm; cat /proc/1/comm; exit 3\n", "console")
	if code != 3 || !strings.Contains(stdout, "hello-from-vm\n") || !strings.Contains(stdout, "\ninit\n") {
		t.Fatalf("by name: exit %d, stdout %q, stderr %q; want 3, hello-from-vm and PID 1's comm (init)", code, stdout, stderr)
	}
	stdout, stderr, code = debugConsole(t, d, "ls /init /bin/busybox; busybox id -u; pwd; echo $HOME; cat /no/such/file\n", run.PodSandboxId[:12])
	if code != 1 || !strings.Contains(stdout, "/init\n") || !strings.Contains(stdout, "/bin/busybox\n") ||
		!strings.Contains(stdout, "\n0\n/\n/root\n") || !strings.Contains(stderr, "/no/such/file") {
		t.Fatalf("by short ID: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// cocoond booted the VM with the policy its agent enforces.
	stdout, stderr, code = debugConsole(t, d, "cat /proc/cmdline\n", "console")
	if code != 0 || !strings.Contains(stdout, "cocoon.agent_token=fw_cfg cocoon.debug_console=1") {
		t.Fatalf("guest command line: exit %d, stdout %q, stderr %q; want the agent token and the debug console policy", code, stdout, stderr)
	}

	_, stderr, code = debugConsole(t, d, "true\n", "no-such-pod")
	if code != 1 || !strings.Contains(stderr, `no pod has the ID, ID prefix or name "no-such-pod"`) {
		t.Fatalf("unknown pod: exit %d, stderr %q", code, stderr)
	}
	if _, err := d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = debugConsole(t, d, "true\n", "console")
	if code != 1 || !strings.Contains(stderr, "is NOTREADY: its VM is not running") {
		t.Fatalf("stopped pod: exit %d, stderr %q", code, stderr)
	}
}
