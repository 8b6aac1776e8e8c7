package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// PodSandboxStats sums the pod's containers into pod CPU, memory and processes.
func (s *Server) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	p, err := s.pods.Pod(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, podStatsTimeout)
	defer cancel()
	st, err := s.podStats(ctx, &p)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: st}, nil
}

// podStats sums the pod's containers; an agent that does not answer fails it
// (zeros would read as real usage).
func (s *Server) podStats(ctx context.Context, p *sandbox.Pod) (*runtimeapi.PodSandboxStats, error) {
	ts := time.Now().UnixNano()
	linux := &runtimeapi.LinuxPodSandboxStats{
		Cpu:     &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(0), UsageNanoCores: u64(0)},
		Memory:  &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: u64(0), UsageBytes: u64(0), RssBytes: u64(0), PageFaults: u64(0), MajorPageFaults: u64(0)},
		Process: &runtimeapi.ProcessUsage{Timestamp: ts, ProcessCount: u64(0)},
	}
	for _, c := range s.podContainers(p.ID, nil) {
		st, err := s.pods.ContainerStats(ctx, c.ID)
		if agentSilent(err) {
			return nil, err
		}
		if err != nil {
			continue // a container going away while summed is not an error
		}
		cs := s.toCRIStats(&c, st)
		linux.Containers = append(linux.Containers, cs)
		linux.Cpu.UsageCoreNanoSeconds.Value += st.CPUUsageNs
		linux.Cpu.UsageNanoCores.Value += st.CPUNanoCores
		linux.Memory.WorkingSetBytes.Value += st.MemoryWorkingSet
		linux.Memory.UsageBytes.Value += st.MemoryUsage
		linux.Memory.RssBytes.Value += st.MemoryRSS
		linux.Memory.PageFaults.Value += st.PageFaults
		linux.Memory.MajorPageFaults.Value += st.MajorPageFaults
		linux.Process.ProcessCount.Value += st.Processes
	}
	// The counters are the host's: a pod whose netns cannot be read (it is
	// going away) reports no network rather than failing its CPU and memory.
	if ns, err := s.pods.PodNetworkStats(p.ID); err == nil && ns != nil {
		linux.Network = toCRINetwork(ns)
	}
	return &runtimeapi.PodSandboxStats{
		Attributes: podAttributes(p),
		Linux:      linux,
	}, nil
}

// toCRINetwork is kubelet's view of a pod's interface counters.
func toCRINetwork(ns *sandbox.NetworkStats) *runtimeapi.NetworkUsage {
	iface := &runtimeapi.NetworkInterfaceUsage{
		Name:     ns.Interface,
		RxBytes:  u64(ns.RxBytes),
		RxErrors: u64(ns.RxErrors),
		TxBytes:  u64(ns.TxBytes),
		TxErrors: u64(ns.TxErrors),
	}
	// The pod has one interface, so it is the default and the whole list
	// (kubelet's summary reads the list).
	return &runtimeapi.NetworkUsage{Timestamp: ns.Timestamp.UnixNano(), DefaultInterface: iface, Interfaces: []*runtimeapi.NetworkInterfaceUsage{iface}}
}
