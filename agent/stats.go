package agent

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

func (e *engine) stats(id string) (*agentapi.ContainerStats, error) {
	c, err := e.get(id)
	if err != nil {
		return nil, err
	}
	st, err := c.lc.Stats()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "stats: %v", err)
	}
	out := &agentapi.ContainerStats{TimestampNs: time.Now().UnixNano()}
	cg := st.CgroupStats
	if cg == nil {
		return out, nil
	}
	out.CpuUsageNs = cg.CpuStats.CpuUsage.TotalUsage
	out.CpuUserNs = cg.CpuStats.CpuUsage.UsageInUsermode
	out.CpuSystemNs = cg.CpuStats.CpuUsage.UsageInKernelmode
	mem := cg.MemoryStats
	out.MemoryUsageBytes = mem.Usage.Usage
	out.MemoryLimitBytes = mem.Usage.Limit
	out.MemoryRssBytes = mem.Stats["anon"]
	out.MemoryPageFaults = mem.Stats["pgfault"]
	out.MemoryMajorPageFaults = mem.Stats["pgmajfault"]
	// The working set is what kubelet evicts on: usage less reclaimable cache.
	out.MemoryWorkingSetBytes = out.MemoryUsageBytes
	if inactive := mem.Stats["inactive_file"]; inactive < out.MemoryWorkingSetBytes {
		out.MemoryWorkingSetBytes -= inactive
	}
	out.PidsCurrent = cg.PidsStats.Current
	out.PidsLimit = cg.PidsStats.Limit
	return out, nil
}
