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

// NetworkStats is a pod interface's usage: Rx is what reached the pod.
type NetworkStats struct {
	Timestamp time.Time
	Interface string
	RxBytes   uint64
	RxErrors  uint64
	TxBytes   uint64
	TxErrors  uint64
}

// PodNetworkStats reads the pod's network usage: the counters of its CNI
// interface on the host, which carries every packet of the VM. A pod that is
// not ready, or has no netns of its own, has none (nil, no error).
func (m *Manager) PodNetworkStats(id string) (*NetworkStats, error) {
	p, err := m.Pod(id)
	if err != nil {
		return nil, err
	}
	if p.NetnsPath == "" || p.State != StateReady {
		return nil, nil
	}
	s, err := m.opts.Network.Stats(p.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("network stats of pod %s: %w", id, err)
	}
	return &NetworkStats{Timestamp: time.Now(), Interface: s.Name, RxBytes: s.RxBytes, RxErrors: s.RxErrors, TxBytes: s.TxBytes, TxErrors: s.TxErrors}, nil
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
	// A short call: a silent agent costs its caller agentCallTimeout at most.
	cctx, cancel := rt.shortCall(ctx)
	defer cancel()
	s, err := rt.agent.StatsContainer(cctx, &agentapi.ContainerRequest{ContainerId: c.ID})
	if err != nil {
		return nil, fmt.Errorf("%w: stats of %s: %v", errdefs.ErrUnavailable, c.ID, err)
	}
	if err := checkStats(s); err != nil {
		return nil, fmt.Errorf("%w: stats of %s: %v", errdefs.ErrUnavailable, c.ID, err)
	}
	st.Timestamp = time.Unix(0, s.GetTimestampNs())
	if d := time.Since(st.Timestamp); d > maxStatsClockSkew || d < -maxStatsClockSkew {
		// The guest's clock is the guest's: kubelet rates usage over these
		// timestamps, so one far off the host's is replaced by the host's.
		st.Timestamp = time.Now()
	}
	st.CPUUsageNs = s.GetCpuUsageNs()
	st.CPUNanoCores = m.cpu.rate(c.ID, st.Timestamp, st.CPUUsageNs)
	st.MemoryUsage, st.MemoryWorkingSet, st.MemoryRSS = s.GetMemoryUsageBytes(), s.GetMemoryWorkingSetBytes(), s.GetMemoryRssBytes()
	st.MemoryLimit, st.PageFaults, st.MajorPageFaults = s.GetMemoryLimitBytes(), s.GetMemoryPageFaults(), s.GetMemoryMajorPageFaults()
	st.Processes = s.GetPidsCurrent()
	return st, nil
}

// Bounds of a plausible stats reply. The ttRPC client already refuses a
// message over 4 MiB (ttrpc's fixed limit); these refuse numbers no guest of
// ours can have, which a hostile agent would send to skew kubelet's
// eviction and autoscaling decisions.
const (
	maxStatsBytes     = 1 << 50 // 1 PiB: no pod VM has that much memory
	maxStatsPids      = 1 << 22 // Linux's PID_MAX_LIMIT
	maxStatsClockSkew = time.Minute
)

// checkStats refuses a stats reply with absurd values. The memory limit is
// not checked: "no limit" reads as a huge number.
func checkStats(s *agentapi.ContainerStats) error {
	for name, v := range map[string]uint64{
		"memory usage": s.GetMemoryUsageBytes(), "memory working set": s.GetMemoryWorkingSetBytes(), "memory rss": s.GetMemoryRssBytes(),
	} {
		if v > maxStatsBytes {
			return fmt.Errorf("implausible %s %d bytes", name, v)
		}
	}
	if s.GetMemoryWorkingSetBytes() > s.GetMemoryUsageBytes() && s.GetMemoryUsageBytes() != 0 {
		return fmt.Errorf("implausible working set %d over usage %d", s.GetMemoryWorkingSetBytes(), s.GetMemoryUsageBytes())
	}
	if s.GetPidsCurrent() > maxStatsPids {
		return fmt.Errorf("implausible process count %d", s.GetPidsCurrent())
	}
	return nil
}
