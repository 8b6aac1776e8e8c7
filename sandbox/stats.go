package sandbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// Stats is one container's resource usage.
type Stats struct {
	Timestamp         time.Time
	CPUUsageNs        uint64
	CPUNanoCores      uint64 // average since the previous sample; 0 on the first
	MemoryUsage       uint64
	MemoryWorkingSet  uint64
	MemoryRSS         uint64
	MemoryLimit       uint64
	PageFaults        uint64
	MajorPageFaults   uint64
	Processes         uint64
	WritableLayerSize uint64
}

// cpuSamples remembers each container's last CPU reading to turn cumulative
// usage into a rate, as kubelet expects usage_nano_cores.
type cpuSamples struct {
	mu   sync.Mutex
	last map[string]cpuSample
}

type cpuSample struct {
	at    time.Time
	usage uint64
}

func (s *cpuSamples) rate(id string, at time.Time, usage uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		s.last = map[string]cpuSample{}
	}
	prev, ok := s.last[id]
	s.last[id] = cpuSample{at, usage}
	if !ok || !at.After(prev.at) || usage < prev.usage {
		return 0
	}
	return uint64(float64(usage-prev.usage) / at.Sub(prev.at).Seconds())
}

// ContainerStats reads a running container's usage from the agent.
func (m *Manager) ContainerStats(ctx context.Context, id string) (*Stats, error) {
	c, err := m.Container(id)
	if err != nil {
		return nil, err
	}
	st := &Stats{Timestamp: time.Now()}
	if size, err := m.opts.Images.Store().ContainerSize(c.ID); err == nil && size > 0 {
		st.WritableLayerSize = uint64(size)
	}
	if c.State != StateRunning {
		return st, nil
	}
	rt, err := m.runtime(c.PodID)
	if err != nil {
		return st, nil
	}
	s, err := rt.agent.StatsContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.ID})
	if err != nil {
		return nil, fmt.Errorf("%w: stats of %s: %v", errdefs.ErrUnavailable, c.ID, err)
	}
	st.Timestamp = time.Unix(0, s.GetTimestampNs())
	st.CPUUsageNs = s.GetCpuUsageNs()
	st.CPUNanoCores = m.cpu.rate(c.ID, st.Timestamp, st.CPUUsageNs)
	st.MemoryUsage, st.MemoryWorkingSet, st.MemoryRSS = s.GetMemoryUsageBytes(), s.GetMemoryWorkingSetBytes(), s.GetMemoryRssBytes()
	st.MemoryLimit, st.PageFaults, st.MajorPageFaults = s.GetMemoryLimitBytes(), s.GetMemoryPageFaults(), s.GetMemoryMajorPageFaults()
	st.Processes = s.GetPidsCurrent()
	return st, nil
}
