package cri

import (
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

func u64(v uint64) *runtimeapi.UInt64Value { return &runtimeapi.UInt64Value{Value: v} }

// toCRIStats maps one container's usage, with its identity for kubelet.
func (s *Server) toCRIStats(c *sandbox.Container, st *sandbox.Stats) *runtimeapi.ContainerStats {
	cfg := c.ContainerConfig()
	ts := st.Timestamp.UnixNano()
	out := &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{Id: c.ID, Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations()},
		Cpu:        &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(st.CPUUsageNs), UsageNanoCores: u64(st.CPUNanoCores)},
		Memory: &runtimeapi.MemoryUsage{
			Timestamp: ts, WorkingSetBytes: u64(st.MemoryWorkingSet), UsageBytes: u64(st.MemoryUsage), RssBytes: u64(st.MemoryRSS),
			PageFaults: u64(st.PageFaults), MajorPageFaults: u64(st.MajorPageFaults),
		},
		WritableLayer: &runtimeapi.FilesystemUsage{Timestamp: ts, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: s.opts.GraphRoot}, UsedBytes: u64(st.WritableLayerSize)},
	}
	if st.MemoryLimit > 0 && st.MemoryLimit >= st.MemoryWorkingSet && st.MemoryLimit < 1<<62 {
		out.Memory.AvailableBytes = u64(st.MemoryLimit - st.MemoryWorkingSet)
	}
	return out
}

// podContainers lists a pod's containers that match the label selector.
func (s *Server) podContainers(podID string, selector map[string]string) []sandbox.Container {
	var out []sandbox.Container
	for _, c := range s.pods.Containers() {
		if (podID == "" || c.PodID == podID) && labelsMatch(c.ContainerConfig().GetLabels(), selector) {
			out = append(out, c)
		}
	}
	return out
}
