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
	// cgroup v2 names first; a host pod on a v1 host has v1's (the
	// hierarchy's totals, as cAdvisor reads them).
	out.MemoryRssBytes = memStat(mem.Stats, "anon", "total_rss")
	out.MemoryPageFaults = memStat(mem.Stats, "pgfault", "total_pgfault")
	out.MemoryMajorPageFaults = memStat(mem.Stats, "pgmajfault", "total_pgmajfault")
	// The working set is what kubelet evicts on: usage less reclaimable cache.
	out.MemoryWorkingSetBytes = out.MemoryUsageBytes
	if inactive := memStat(mem.Stats, "inactive_file", "total_inactive_file"); inactive < out.MemoryWorkingSetBytes {
		out.MemoryWorkingSetBytes -= inactive
	}
	out.PidsCurrent = cg.PidsStats.Current
	out.PidsLimit = cg.PidsStats.Limit
	return out, nil
}

// memStat is the first of keys the memory stats have.
func memStat(stats map[string]uint64, keys ...string) uint64 {
	for _, k := range keys {
		if v, ok := stats[k]; ok {
			return v
		}
	}
	return 0
}
