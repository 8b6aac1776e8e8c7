package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// crictl runs the real crictl against the daemon under test.
func crictl(e *env, stdin string, args ...string) (string, error) {
	full := append([]string{"--runtime-endpoint", "unix://" + e.socket, "--image-endpoint", "unix://" + e.socket, "--timeout", "60s"}, args...)
	cmd := exec.Command(filepath.Join(e.bin, "crictl"), full...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestStreamingExecAttachPortForward drives the streaming server with crictl:
// exec with its exit code, attach with stdin, and port-forward into the pod.
func TestStreamingExecAttachPortForward(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	if _, err := os.Stat(filepath.Join(e.bin, "crictl")); err != nil {
		t.Skip("skipping: crictl not built (make tools)")
	}
	ctx := ctxT(t)
	imageRef := pull(t, e, busybox)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "stream", Namespace: "default", Uid: "stream-1"},
		Hostname: "stream", LogDirectory: t.TempDir(),
	}
	run, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer e.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId})
	start := func(name string, stdin bool, cmd ...string) string {
		t.Helper()
		c, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: run.PodSandboxId, SandboxConfig: podCfg,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: name},
				Image:    &runtimeapi.ImageSpec{Image: imageRef}, Command: cmd,
				Stdin: stdin, StdinOnce: stdin, LogPath: name + ".log",
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatal(err)
		}
		return c.ContainerId
	}
	web := start("web", false, "sh", "-c", "echo port-forwarded > /tmp/index.html; exec httpd -f -p 8080 -h /tmp")

	out, err := crictl(e, "", "exec", web, "sh", "-c", "echo exec-stream; echo to-err >&2; exit 7")
	if !strings.Contains(out, "exec-stream") || !strings.Contains(out, "to-err") || err == nil || !strings.Contains(out, "7") {
		t.Fatalf("crictl exec: %v\n%s", err, out)
	}
	out, err = crictl(e, "line one\n", "exec", "-i", web, "cat")
	if err != nil || !strings.Contains(out, "line one") {
		t.Fatalf("crictl exec -i: %v\n%s", err, out)
	}

	echo := start("echo", true, "sh", "-c", "while read l; do echo got:$l; done; echo stdin-closed")
	out, err = crictl(e, "hello\n", "attach", "-i", echo)
	if err != nil || !strings.Contains(out, "got:hello") {
		t.Fatalf("crictl attach: %v\n%s", err, out)
	}

	// port-forward runs until killed: the host port leads to 8080 inside the pod.
	pf := exec.Command(filepath.Join(e.bin, "crictl"), "--runtime-endpoint", "unix://"+e.socket, "port-forward", run.PodSandboxId, "18081:8080")
	pfOut := &strings.Builder{}
	pf.Stdout, pf.Stderr = pfOut, pfOut
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pf.Process.Kill(); _ = pf.Wait() }()
	var body string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get("http://127.0.0.1:18081/index.html"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("port-forward never answered; crictl said: %s", pfOut.String())
		}
	}
	if !strings.Contains(body, "port-forwarded") {
		t.Fatalf("port-forward body %q", body)
	}
}
