// Package metrics is cocoond's Prometheus side. It owns one registry (not the
// global default) and implements the small observer interfaces the other
// packages declare (cri.RequestObserver, sandbox.BootObserver,
// agentclient.CallObserver, image.PullObserver), so none of them imports
// Prometheus. Pod, container and VM process figures are read at scrape time
// from the sandbox store and /proc, never kept as counters that could drift.
package metrics

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

const namespace = "cocoon"

// Buckets in seconds. CRI calls range from sub-millisecond status polls to
// pod starts and pulls of a minute or more; VM boots from ~100 ms (KVM) to
// several seconds (TCG); pulls from a cached manifest check to large images.
var (
	requestBuckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	bootBuckets    = []float64{.05, .1, .25, .5, 1, 2, 4, 8, 15, 30, 60}
	pullBuckets    = []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
)

// Metrics holds the registry and the metrics fed by observer hooks.
type Metrics struct {
	registry *prometheus.Registry

	requests     *prometheus.HistogramVec
	bootDuration *prometheus.HistogramVec
	bootFailures *prometheus.CounterVec
	pullBytes    prometheus.Counter
	pullDuration *prometheus.HistogramVec
	agentErrors  *prometheus.CounterVec
}

// New builds the registry with the Go and process collectors and the hook-fed
// families. handlers are the configured runtime handlers: their boot failure
// counters start at 0 so rate() works before the first failure.
func New(handlers []string) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "cri_request_duration_seconds",
			Help:    "CRI RPCs by method and gRPC code, as answered by cocoond.",
			Buckets: requestBuckets,
		}, []string{"method", "code"}),
		bootDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "vm_boot_duration_seconds",
			Help:    "Pod VM boots, from starting the VMM to a healthy agent.",
			Buckets: bootBuckets,
		}, []string{"handler", "vmm"}),
		bootFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "vm_boot_failures_total",
			Help: "Pod VM boots that failed between starting the VMM and a healthy agent.",
		}, []string{"handler"}),
		pullBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "image_pull_bytes_total",
			Help: "Bytes read from registries by image pulls, failed pulls included.",
		}),
		pullDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "image_pull_duration_seconds",
			Help:    "Image downloads (concurrent pulls of one image count once) by result.",
			Buckets: pullBuckets,
		}, []string{"result"}),
		agentErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "agent_rpc_errors_total",
			Help: "Failed unary ttRPC calls to pod agents by method (calls the caller cancelled or made on a closed connection excluded).",
		}, []string{"method"}),
	}
	for _, h := range handlers {
		m.bootFailures.WithLabelValues(h)
	}
	for _, r := range []string{resultSuccess, resultFailure} {
		m.pullDuration.WithLabelValues(r)
	}
	for _, method := range unaryAgentMethods() {
		m.agentErrors.WithLabelValues(method)
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.bootDuration, m.bootFailures, m.pullBytes, m.pullDuration, m.agentErrors,
	)
	return m
}

// Registry is what /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// WatchSandboxes adds the scrape-time collectors over the sandbox store: pod
// and container counts by state, and each running pod VM's processes.
func (m *Metrics) WatchSandboxes(s Sandboxes) {
	m.registry.MustRegister(&stateCollector{store: s}, &vmProcessCollector{store: s, procDir: "/proc"})
}

// ObserveRequest implements cri.RequestObserver.
func (m *Metrics) ObserveRequest(method string, code codes.Code, d time.Duration) {
	m.requests.WithLabelValues(method, code.String()).Observe(d.Seconds())
}

// ObserveBoot implements sandbox.BootObserver.
func (m *Metrics) ObserveBoot(handler, vmm string, d time.Duration, err error) {
	if err != nil {
		m.bootFailures.WithLabelValues(handler).Inc()
		return
	}
	m.bootDuration.WithLabelValues(handler, vmm).Observe(d.Seconds())
}

const (
	resultSuccess = "success"
	resultFailure = "failure"
)

// ObservePull implements image.PullObserver.
func (m *Metrics) ObservePull(bytes uint64, d time.Duration, err error) {
	m.pullBytes.Add(float64(bytes))
	result := resultSuccess
	if err != nil {
		result = resultFailure
	}
	m.pullDuration.WithLabelValues(result).Observe(d.Seconds())
}

// ObserveAgentCall implements agentclient.CallObserver. A call whose caller
// cancelled it, or that ran on a connection cocoond closed (a stopping pod's
// pending WaitProcess), says nothing about the agent and is not counted.
func (m *Metrics) ObserveAgentCall(ctx context.Context, method string, err error) {
	if err == nil || errors.Is(ctx.Err(), context.Canceled) || errors.Is(err, ttrpc.ErrClosed) {
		return
	}
	m.agentErrors.WithLabelValues(method).Inc()
}

// unaryAgentMethods lists the agent protocol's unary methods (the ones the
// client interceptor sees), read from the generated descriptor.
func unaryAgentMethods() []string {
	var out []string
	services := agentapi.File_agent_proto.Services()
	for i := 0; i < services.Len(); i++ {
		methods := services.Get(i).Methods()
		for j := 0; j < methods.Len(); j++ {
			if md := methods.Get(j); !md.IsStreamingClient() && !md.IsStreamingServer() {
				out = append(out, string(md.Name()))
			}
		}
	}
	return out
}
