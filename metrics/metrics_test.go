package metrics

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
	"github.com/cocoon-runtime/cocoon/metrics/metricstest"
)

func TestBootObservations(t *testing.T) {
	m := New([]string{"cocoon", "fast"})
	m.ObserveBoot("cocoon", "qemu", 3*time.Second, nil)
	m.ObserveBoot("cocoon", "qemu", 40*time.Second, nil)
	m.ObserveBoot("fast", "clh", 0, errors.New("agent not healthy"))
	want := `
# HELP cocoon_vm_boot_duration_seconds Pod VM boots, from starting the VMM to a healthy agent.
# TYPE cocoon_vm_boot_duration_seconds histogram
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="0.05"} 0
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="0.1"} 0
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="0.25"} 0
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="0.5"} 0
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="1"} 0
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="2"} 0
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="4"} 1
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="8"} 1
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="15"} 1
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="30"} 1
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="60"} 2
cocoon_vm_boot_duration_seconds_bucket{handler="cocoon",vmm="qemu",le="+Inf"} 2
cocoon_vm_boot_duration_seconds_sum{handler="cocoon",vmm="qemu"} 43
cocoon_vm_boot_duration_seconds_count{handler="cocoon",vmm="qemu"} 2
# HELP cocoon_vm_boot_failures_total Pod VM boots that failed between starting the VMM and a healthy agent.
# TYPE cocoon_vm_boot_failures_total counter
cocoon_vm_boot_failures_total{handler="cocoon"} 0
cocoon_vm_boot_failures_total{handler="fast"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "cocoon_vm_boot_duration_seconds", "cocoon_vm_boot_failures_total"); err != nil {
		t.Fatal(err)
	}
}

func TestPullObservations(t *testing.T) {
	m := New(nil)
	m.ObservePull(1000, 2*time.Second, nil)
	m.ObservePull(24, 200*time.Millisecond, errors.New("manifest unknown"))
	if got := testutil.ToFloat64(m.pullBytes); got != 1024 {
		t.Fatalf("pull bytes = %v, want 1024", got)
	}
	for result, want := range map[string]uint64{resultSuccess: 1, resultFailure: 1} {
		if got := histogramCount(t, m, "cocoon_image_pull_duration_seconds", map[string]string{"result": result}); got != want {
			t.Errorf("%s pulls = %d, want %d", result, got, want)
		}
	}
}

func TestRequestObservations(t *testing.T) {
	m := New(nil)
	m.ObserveRequest("RunPodSandbox", codes.OK, time.Second)
	m.ObserveRequest("RunPodSandbox", codes.OK, time.Second)
	m.ObserveRequest("ContainerStatus", codes.NotFound, time.Millisecond)
	for _, tt := range []struct {
		method, code string
		want         uint64
	}{{"RunPodSandbox", "OK", 2}, {"ContainerStatus", "NotFound", 1}, {"RunPodSandbox", "NotFound", 0}} {
		if got := histogramCount(t, m, "cocoon_cri_request_duration_seconds", map[string]string{"method": tt.method, "code": tt.code}); got != tt.want {
			t.Errorf("%s %s: %d observations, want %d", tt.method, tt.code, got, tt.want)
		}
	}
}

// histogramCount is a histogram series' sample count (0 when absent).
func histogramCount(t *testing.T, m *Metrics, name string, labels map[string]string) uint64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	return metricstest.Find(families, name, labels).GetHistogram().GetSampleCount()
}

// fakeHealth is a hand-written agent Health service whose Check answers
// (once block, when set, is closed).
type fakeHealth struct{ block chan struct{} }

func (f *fakeHealth) Check(ctx context.Context, _ *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
		}
	}
	return &agentapi.CheckResponse{Status: agentapi.CheckResponse_SERVING}, nil
}

// troubledAgent fails StatsContainer, as an agent in trouble would.
type troubledAgent struct{ *agenttest.Hostile }

func (troubledAgent) StatsContainer(context.Context, *agentapi.ContainerRequest) (*agentapi.ContainerStats, error) {
	return nil, status.Error(codes.FailedPrecondition, "agent not ready")
}

// TestAgentErrorsThroughTheInterceptor runs real ttRPC calls through the
// client interceptor agentclient.ObserveCalls installs.
func TestAgentErrorsThroughTheInterceptor(t *testing.T) {
	health := &fakeHealth{}
	sock := agenttest.Serve(t, troubledAgent{&agenttest.Hostile{}}, health)

	m := New(nil)
	client, err := agentclient.Wait(context.Background(), func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, agentclient.ObserveCalls(m))
	if err != nil {
		t.Fatal(err)
	}
	h, a := agentapi.NewHealthClient(client), agentapi.NewAgentClient(client)
	ctx := context.Background()
	stats := &agentapi.ContainerRequest{ContainerId: "c"}
	if _, err := a.StatsContainer(ctx, stats); agentclient.GuestCode(err) != codes.FailedPrecondition {
		t.Fatalf("StatsContainer: %v", err)
	}
	if _, err := a.StatsContainer(ctx, stats); err == nil {
		t.Fatal("StatsContainer succeeded")
	}
	// A call its caller gives up on is not the agent's failure.
	health.block = make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := h.Check(cctx, &agentapi.CheckRequest{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Check: %v", err)
	}
	close(health.block)
	// Nor is a call on a connection cocoond closed.
	client.Close()
	if _, err := a.StatsContainer(ctx, stats); err == nil {
		t.Fatal("StatsContainer on a closed client succeeded")
	}

	want := map[string]float64{"StatsContainer": 2, "Check": 0, "CreateContainer": 0}
	for method, n := range want {
		if got := testutil.ToFloat64(m.agentErrors.WithLabelValues(method)); got != n {
			t.Errorf("agent errors for %s = %v, want %v", method, got, n)
		}
	}
	// Every unary method starts at 0; streams are not observed.
	if got := testutil.CollectAndCount(m.agentErrors); got != len(unaryAgentMethods()) || got < 15 {
		t.Errorf("%d agent error series, want one per unary method (%d)", got, len(unaryAgentMethods()))
	}
	for _, method := range unaryAgentMethods() {
		if method == "ReadOutput" || method == "PortForward" {
			t.Errorf("streaming method %s listed as unary", method)
		}
	}
}

func TestRegistryHasTheStandardCollectors(t *testing.T) {
	m := New(nil)
	m.WatchSandboxes(&fakeStore{})
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range families {
		seen[f.GetName()] = true
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "cocoon_sandboxes", "cocoon_containers", "cocoon_image_pull_bytes_total", "cocoon_agent_rpc_errors_total"} {
		if !seen[name] {
			t.Errorf("%s missing", name)
		}
	}
}
