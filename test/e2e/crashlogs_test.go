package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestLogsSurviveCocoondKill (issue 14): cocoond is killed with SIGKILL,
// three times, while a container prints numbered lines as fast as it can
// (output is in flight at any moment); after each restart the CRI log holds every line, in order, once.
// Output cocoond had taken from the agent but not yet written dies with it:
// the agent sends it again from the offset the log file says was persisted.
func TestLogsSurviveCocoondKill(t *testing.T) {
	e := requireEnv(t)
	for _, tc := range []struct {
		name string
		ns   *runtimeapi.NamespaceOption // nil: a VM pod
	}{
		{"vm", nil},
		{"host", &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ns == nil && os.Getenv("COCOON_GUEST_DIR") == "" {
				t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
			}
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
			podCfg := &runtimeapi.PodSandboxConfig{
				Metadata:     &runtimeapi.PodSandboxMetadata{Name: "crashlogs-" + tc.name, Namespace: "default", Uid: "crashlogs-" + tc.name},
				LogDirectory: logDir,
			}
			if tc.ns != nil {
				podCfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: tc.ns}}
			}
			pod := runPod(ctx, t, d, podCfg)
			ticker := startCtr(ctx, t, d, pod, podCfg, "ticker", nil,
				"sh", "-c", "i=0; while :; do echo tick-$i; i=$((i+1)); done")
			logPath := filepath.Join(logDir, "ticker.log")
			want := 20
			waitAllTicks(t, logPath, want)
			for kill := range 3 {
				if err := d.cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				_ = d.cmd.Wait()
				time.Sleep(500 * time.Millisecond) // ticks while no cocoond runs
				_ = os.Remove(d.socket)            // a killed daemon leaves its socket
				next, err := startDaemon(e.bin, dir)
				if err != nil {
					t.Fatal(err)
				}
				d = next
				cst, err := d.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ticker})
				if err != nil || cst.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
					t.Fatalf("ticker after kill %d: %v, %v", kill+1, cst, err)
				}
				// Past the lines printed around the kill, every one there.
				want = ticksIn(t, logPath) + 20
				waitAllTicks(t, logPath, want)
			}
			// What the agent resent (the figure that sizes its window).
			agentLogs, _ := filepath.Glob(filepath.Join(dir, "run", "vm", "*", "*.log"))
			for _, f := range agentLogs {
				data, _ := os.ReadFile(f)
				for _, l := range bytes.Split(data, []byte("\n")) {
					if bytes.Contains(l, []byte("resending output")) {
						t.Logf("%s", l)
					}
				}
			}
			if _, err := d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

var tickText = regexp.MustCompile(`^tick-(\d+)$`)

// ticksIn reads the ticker's CRI log, joining partial records, fails the
// test unless its lines are tick-0, tick-1, ... each once, and says how many.
func ticksIn(t *testing.T, path string) int {
	t.Helper()
	data, _ := os.ReadFile(path)
	var lines [][]byte
	var line []byte
	for _, rec := range bytes.Split(data, []byte("\n")) {
		// "<time> stdout <P|F> <text>"; a torn last record is no line yet.
		f := bytes.SplitN(rec, []byte(" "), 4)
		if len(f) != 4 || string(f[1]) != "stdout" {
			continue
		}
		line = append(line, f[3]...)
		if string(f[2]) == "F" {
			lines = append(lines, line)
			line = nil
		}
	}
	for i, l := range lines {
		m := tickText.FindSubmatch(l)
		if m == nil {
			t.Fatalf("log line %d is %q\n%s", i, l, data)
		}
		if v, _ := strconv.Atoi(string(m[1])); v != i {
			t.Fatalf("log line %d is tick-%d: ticks were lost, doubled or reordered\n%s", i, v, data)
		}
	}
	return len(lines)
}

// waitAllTicks waits until the log holds at least n ticks, all in place.
func waitAllTicks(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for ticksIn(t, path) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d ticks in %s after a minute", n, path)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
