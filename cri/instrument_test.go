package cri

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/metrics"
	"github.com/cocoon-runtime/cocoon/metrics/metricstest"
)

// TestInstrumentRecordsRequests runs unary and stream RPCs through the wrapper
// with the real metrics registry and checks each lands under its short method
// name and the gRPC code the caller saw.
func TestInstrumentRecordsRequests(t *testing.T) {
	t.Parallel()
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

// TestToStatusMapsOnlyOurErrors: our sentinels and context errors choose the
// code kubelet sees; a gRPC status that reached the CRI boundary, wrapped or
// not, came from elsewhere (a guest agent, a library) and is Unknown.
func TestToStatusMapsOnlyOurErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"not found", fmt.Errorf("pod p: %w", errdefs.ErrNotFound), codes.NotFound},
		{"invalid argument", invalid("bad %s", "id"), codes.InvalidArgument},
		{"already exists", fmt.Errorf("name x: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists},
		{"failed precondition", fmt.Errorf("%w: pod is stopped", errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{"unavailable", fmt.Errorf("%w: agent busy", errdefs.ErrUnavailable), codes.Unavailable},
		{"unauthenticated", fmt.Errorf("%w: token", errdefs.ErrUnauthenticated), codes.Unauthenticated},
		{"not implemented", fmt.Errorf("%w: checkpoint", errdefs.ErrNotImplemented), codes.Unimplemented},
		{"deadline", fmt.Errorf("boot: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"canceled", fmt.Errorf("pull: %w", context.Canceled), codes.Canceled},
		{"plain error", errors.New("disk on fire"), codes.Unknown},
		{"guest NotFound wrapped", fmt.Errorf("agent StartContainer: %w", status.Error(codes.NotFound, "no such container")), codes.Unknown},
		{"guest InvalidArgument wrapped", fmt.Errorf("agent CreateContainer: %w", status.Error(codes.InvalidArgument, "bad spec")), codes.Unknown},
		{"bare status", status.Error(codes.PermissionDenied, "denied"), codes.Unknown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := toStatus(tt.err)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("toStatus(%v) has code %s, want %s", tt.err, got, tt.want)
			}
			if st, _ := status.FromError(err); st.Message() != tt.err.Error() {
				t.Fatalf("message %q, want the error's own %q", st.Message(), tt.err.Error())
			}
		})
	}
	if toStatus(nil) != nil {
		t.Fatal("toStatus(nil) is not nil")
	}
}
