package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/metrics/metricstest"
)

// TestMetricsEndpoint runs one pod and scrapes cocoond's /metrics over HTTP:
// every cocoon family is there, and the pod's VM shows up by sandbox_id with
// real memory and CPU figures, and goes away with the pod.
func TestMetricsEndpoint(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	ctx := ctxT(t)
	imageRef := pull(t, e, busybox)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "metrics-pod", Namespace: "metrics-ns", Uid: "metrics-1"},
		LogDirectory: t.TempDir(),
	}
	run, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := run.PodSandboxId
	defer e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
	c, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: podID, SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
			Image:    &runtimeapi.ImageSpec{Image: imageRef},
			Command:  []string{"sleep", "3600"},
			LogPath:  "sleeper.log",
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := e.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	// An error path: the wrapper records it under its gRPC code.
	if _, err := e.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "no-such-container"}); err == nil {
		t.Fatal("status of a missing container succeeded")
	}

	families, text := scrape(t, e.metrics)
	vmLabels := map[string]string{"sandbox_id": podID, "pod_name": "metrics-pod", "pod_namespace": "metrics-ns"}
	checks := []struct {
		family string
		labels map[string]string
		ok     func(*dto.Metric) bool
	}{
		{"cocoon_cri_request_duration_seconds", map[string]string{"method": "RunPodSandbox", "code": "OK"}, histCount(1)},
		{"cocoon_cri_request_duration_seconds", map[string]string{"method": "ContainerStatus", "code": "NotFound"}, histCount(1)},
		{"cocoon_sandboxes", map[string]string{"state": "ready"}, atLeast(1)},
		{"cocoon_sandboxes", map[string]string{"state": "notready"}, atLeast(0)},
		{"cocoon_containers", map[string]string{"state": "running"}, atLeast(1)},
		{"cocoon_containers", map[string]string{"state": "unknown"}, atLeast(0)},
		{"cocoon_vm_boot_duration_seconds", map[string]string{"handler": "cocoon", "vmm": "qemu"}, histCount(1)},
		{"cocoon_vm_boot_failures_total", map[string]string{"handler": "cocoon"}, atLeast(0)},
		{"cocoon_vm_memory_rss_bytes", with(vmLabels, "process", "vmm"), atLeast(1 << 20)},
		{"cocoon_vm_memory_rss_bytes", with(vmLabels, "process", "virtiofsd"), atLeast(1)},
		{"cocoon_vm_cpu_seconds_total", with(vmLabels, "process", "vmm"), atLeast(0.01)},
		{"cocoon_vm_cpu_seconds_total", with(vmLabels, "process", "virtiofsd"), atLeast(0)},
		{"cocoon_image_pull_bytes_total", nil, atLeast(1)}, // the store starts empty: something was downloaded
		{"cocoon_image_pull_duration_seconds", map[string]string{"result": "success"}, histCount(1)},
		{"cocoon_agent_rpc_errors_total", map[string]string{"method": "CreateContainer"}, atLeast(0)},
		{"go_goroutines", nil, atLeast(1)},
		{"process_resident_memory_bytes", nil, atLeast(1)},
	}
	for _, ck := range checks {
		m := metricstest.Find(families, ck.family, ck.labels)
		if m == nil {
			t.Errorf("%s%v missing", ck.family, ck.labels)
			continue
		}
		if !ck.ok(m) {
			t.Errorf("%s%v = %v", ck.family, ck.labels, m)
		}
	}
	t.Logf("scraped /metrics (no buckets, no go_/process_):\n%s", digest(text, podID))

	if _, err := e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	families, _ = scrape(t, e.metrics)
	if m := metricstest.Find(families, "cocoon_vm_memory_rss_bytes", map[string]string{"sandbox_id": podID}); m != nil {
		t.Errorf("removed pod still reported: %v", m)
	}
}

func scrape(t *testing.T, addr string) ([]*dto.MetricFamily, string) {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s, %v", resp.Status, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	var families []*dto.MetricFamily
	for _, f := range byName {
		families = append(families, f)
	}
	return families, string(body)
}

func with(labels map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for key, val := range labels {
		out[key] = val
	}
	return out
}

func atLeast(min float64) func(*dto.Metric) bool {
	return func(m *dto.Metric) bool {
		v := m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
		return v >= min
	}
}

func histCount(min uint64) func(*dto.Metric) bool {
	return func(m *dto.Metric) bool { return m.GetHistogram().GetSampleCount() >= min }
}

// digest keeps the scrape readable in the log: cocoon families without
// histogram buckets, VM series only for this pod, a few lines per family.
func digest(text, podID string) string {
	var b strings.Builder
	perFamily := map[string]int{}
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "cocoon_") || strings.Contains(line, "_bucket{") {
			continue
		}
		if strings.HasPrefix(line, "cocoon_vm_memory") || strings.HasPrefix(line, "cocoon_vm_cpu") {
			if !strings.Contains(line, podID) {
				continue
			}
		}
		family, _, _ := strings.Cut(line, "{")
		family, _, _ = strings.Cut(family, " ")
		if perFamily[family]++; perFamily[family] > 4 {
			continue
		}
		fmt.Fprintln(&b, line)
	}
	return b.String()
}
