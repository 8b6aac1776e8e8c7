// Package cri serves the CRI v1 RuntimeService and ImageService on cocoond's
// socket. Handlers are thin: validate, look up, delegate, map. One file per RPC;
// instrument.go wraps every call.
package cri

import (
	"context"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/image"
)

// imageService is what the CRI image RPCs need from image/.
type imageService interface {
	Pull(ctx context.Context, ref string, auth *image.Auth) (image.PullResult, error)
	List(ctx context.Context, filter string) ([]*image.Image, error)
	Status(ctx context.Context, ref string) (*image.Image, error)
	Remove(ctx context.Context, ref string) error
	FsInfo(ctx context.Context) (image.FsUsage, error)
}

// networkProbe tells whether pod networking can be set up, and why not.
type networkProbe interface {
	Ready() error
}

// Options are the settings the server reports rather than acts on.
type Options struct {
	CgroupDriver string // "cgroupfs" or "systemd"
	// Handlers are the configured runtime handler names (RuntimeClass handlers).
	Handlers []string
	// GraphRoot is the image store, where containers' writable layers live.
	GraphRoot string
	// StatusInfo is extra verbose information for Status (effective config and so on).
	StatusInfo map[string]string
	// Requests is told each RPC's method, code and duration; nil is fine.
	Requests RequestObserver
}

// RequestObserver learns the outcome of every CRI RPC (metrics/ implements
// it). method is the short RPC name ("RunPodSandbox").
type RequestObserver interface {
	ObserveRequest(method string, code codes.Code, d time.Duration)
}

// Server implements both CRI services.
type Server struct {
	// Every runtime RPC is implemented; the embed keeps the build working
	// when a newer cri-api adds one (it then answers Unimplemented).
	runtimeapi.UnimplementedRuntimeServiceServer
	// Every image RPC is implemented; the embed keeps the build working when
	// a newer cri-api adds one.
	runtimeapi.UnimplementedImageServiceServer

	images    imageService
	network   networkProbe
	pods      podManager
	streaming streamURLs
	opts      Options
	log       *logrus.Entry

	mu      sync.Mutex
	podCIDR string // from UpdateRuntimeConfig; handed to CNI with each pod
}

// New builds a server over its dependencies.
func New(images imageService, network networkProbe, pods podManager, streams streamURLs, opts Options, log *logrus.Entry) *Server {
	return &Server{images: images, network: network, pods: pods, streaming: streams, opts: opts, log: log}
}

// Register adds both services to g. Create g with UnaryInterceptor(s.Instrument)
// so every RPC goes through the one wrapper.
func (s *Server) Register(g *grpc.Server) {
	runtimeapi.RegisterRuntimeServiceServer(g, s)
	runtimeapi.RegisterImageServiceServer(g, s)
}

// PodCIDR is the pod CIDR kubelet last sent, or "".
func (s *Server) PodCIDR() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.podCIDR
}
