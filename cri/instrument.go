package cri

import (
	"context"
	"fmt"
	"path"
	"runtime/debug"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// quiet RPCs are polled by kubelet every few seconds: success is logged at debug.
var quiet = map[string]bool{
	"Version": true, "Status": true, "ImageFsInfo": true, "ListImages": true, "StreamImages": true, "StreamPodSandboxes": true, "StreamContainers": true, "StreamContainerStats": true, "GetContainerEvents": true, "StreamPodSandboxStats": true, "StreamPodSandboxMetrics": true, "ImageStatus": true,
	"ListPodSandbox": true, "ListContainers": true, "PodSandboxStatus": true, "ContainerStatus": true,
	"ListContainerStats": true, "ListPodSandboxStats": true, "ContainerStats": true, "PodSandboxStats": true,
	"RuntimeConfig": true, "ListMetricDescriptors": true, "ListPodSandboxMetrics": true,
}

// Instrument is the unary interceptor every CRI RPC passes through: it recovers
// panics, maps internal errors to gRPC codes, logs one structured line and
// reports the method, code and duration to Options.Requests.
func (s *Server) Instrument(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	method := path.Base(info.FullMethod)
	defer s.recoverPanic(method, start, &err)
	resp, err = handler(ctx, req)
	err = s.finish(method, requestFields(req), start, err)
	return resp, err
}

// InstrumentStream is Instrument for the server-streaming list RPCs.
func (s *Server) InstrumentStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	method := path.Base(info.FullMethod)
	defer s.recoverPanic(method, start, &err)
	err = handler(srv, ss)
	return s.finish(method, logrus.Fields{}, start, err)
}

func (s *Server) recoverPanic(method string, start time.Time, err *error) {
	if r := recover(); r != nil {
		s.log.WithField("method", method).Errorf("panic: %v\n%s", r, debug.Stack())
		*err = status.Errorf(codes.Internal, "%s: internal error: %v", method, r)
		s.observe(method, codes.Internal, start)
	}
}

// observe reports one finished RPC to Options.Requests and returns its duration.
func (s *Server) observe(method string, code codes.Code, start time.Time) time.Duration {
	took := time.Since(start)
	if s.opts.Requests != nil {
		s.opts.Requests.ObserveRequest(method, code, took)
	}
	return took
}

// finish maps err to a gRPC status and logs the call's one line.
func (s *Server) finish(method string, fields logrus.Fields, start time.Time, err error) error {
	err = toStatus(err)
	code := status.Code(err)
	took := s.observe(method, code, start)
	entry := s.log.WithFields(fields).WithFields(logrus.Fields{
		"method": method,
		"took":   took.String(),
		"code":   code.String(),
	})
	switch {
	case err == nil && quiet[method]:
		entry.Debug("cri")
	case err == nil:
		entry.Info("cri")
	case code == codes.Internal || code == codes.Unknown:
		entry.WithError(err).Error("cri")
	default:
		entry.WithError(err).Warn("cri")
	}
	return err
}

// toStatus maps an internal error to a gRPC status error, keeping its
// message. Only our sentinels (errdefs, which are containerd's) and context
// errors choose a code, through containerd's errgrpc mapping; an error that
// already carries a gRPC status anywhere in its chain came from elsewhere (a
// guest, a library) and must not choose ours, so it is Unknown. (status.FromError
// unwraps, and errgrpc.ToGRPC passes any status through: both would let it.)
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, foreign := status.FromError(err); foreign {
		return status.Error(codes.Unknown, err.Error())
	}
	return errgrpc.ToGRPC(err)
}

// requestFields pulls the identifiers operators grep for out of a request.
func requestFields(req any) logrus.Fields {
	f := logrus.Fields{}
	if r, ok := req.(interface{ GetPodSandboxId() string }); ok && r.GetPodSandboxId() != "" {
		f["pod"] = r.GetPodSandboxId()
	}
	if r, ok := req.(interface{ GetContainerId() string }); ok && r.GetContainerId() != "" {
		f["container"] = r.GetContainerId()
	}
	if r, ok := req.(interface{ GetImage() *runtimeapi.ImageSpec }); ok && r.GetImage().GetImage() != "" {
		f["image"] = r.GetImage().GetImage()
	}
	return f
}

// invalid builds an InvalidArgument error for request validation in handlers.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errdefs.ErrInvalidArgument, fmt.Sprintf(format, args...))
}
