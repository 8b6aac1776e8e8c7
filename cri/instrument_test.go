package cri

import (
	"context"
	"fmt"
	"testing"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/metrics"
	"github.com/cocoon-runtime/cocoon/metrics/metricstest"
)

// TestInstrumentRecordsRequests runs unary and stream RPCs through the wrapper
// with the real metrics registry and checks each lands under its short method
// name and the gRPC code the caller saw.
func TestInstrumentRecordsRequests(t *testing.T) {
	m := metrics.New(nil)
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	s := New(&fakeImages{}, fakeNetwork{}, nil, nil, Options{Requests: m}, logrus.NewEntry(log))

	unary := func(method string, handler grpc.UnaryHandler) {
		info := &grpc.UnaryServerInfo{FullMethod: "/runtime.v1.RuntimeService/" + method}
		_, _ = s.Instrument(context.Background(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: "p"}, info, handler)
	}
	ok := func(context.Context, any) (any, error) { return &runtimeapi.PodSandboxStatusResponse{}, nil }
	unary("RunPodSandbox", ok)
	unary("RunPodSandbox", ok)
	unary("PodSandboxStatus", func(context.Context, any) (any, error) {
		return nil, fmt.Errorf("pod p: %w", errdefs.ErrNotFound)
	})
	unary("StopPodSandbox", func(context.Context, any) (any, error) { panic("bug") })
	stream := func(method string, err error) {
		info := &grpc.StreamServerInfo{FullMethod: "/runtime.v1.RuntimeService/" + method, IsServerStream: true}
		_ = s.InstrumentStream(nil, nil, info, func(any, grpc.ServerStream) error { return err })
	}
	stream("GetContainerEvents", nil)
	stream("StreamContainers", context.DeadlineExceeded)

	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, f := range families {
		if f.GetName() != "cocoon_cri_request_duration_seconds" {
			continue
		}
		for _, sample := range f.GetMetric() {
			labels := metricstest.Labels(sample)
			got[labels["method"]+" "+labels["code"]] = sample.GetHistogram().GetSampleCount()
		}
	}
	want := map[string]uint64{
		"RunPodSandbox OK":                  2,
		"PodSandboxStatus NotFound":         1,
		"StopPodSandbox Internal":           1,
		"GetContainerEvents OK":             1,
		"StreamContainers DeadlineExceeded": 1,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("recorded %v, want %v", got, want)
	}
}
