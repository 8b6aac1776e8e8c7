package cri

import (
	"context"
	"errors"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox"
)

const (
	// podStatsTimeout is how long one pod's agent has to answer for all its
	// containers in a stats listing; a pod that has not answered by then is
	// left out (with a log line) and the others are answered.
	podStatsTimeout = 5 * time.Second
	// statsParallel bounds the pods queried at once.
	statsParallel = 8
)

// eachPodStats runs query once per pod, up to statsParallel at once, each
// with a deadline of its own, and returns the answers in the pods' order;
// a pod whose query failed has ok false.
func eachPodStats[T any](ctx context.Context, podIDs []string, query func(ctx context.Context, podID string) (T, error), onErr func(podID string, err error)) (out []T, ok []bool) {
	out, ok = make([]T, len(podIDs)), make([]bool, len(podIDs))
	slots := make(chan struct{}, statsParallel)
	var wg sync.WaitGroup
	for i, id := range podIDs {
		wg.Go(func() {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				onErr(id, ctx.Err())
				return
			}
			defer func() { <-slots }()
			pctx, cancel := context.WithTimeout(ctx, podStatsTimeout)
			defer cancel()
			v, err := query(pctx, id)
			if err != nil {
				onErr(id, err)
				return
			}
			out[i], ok[i] = v, true
		})
	}
	wg.Wait()
	return out, ok
}

// agentSilent tells a stats error of the pod's agent (unavailable, too slow)
// from a container that went away while listed.
func agentSilent(err error) bool {
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func (s *Server) logStatsSkipped(podID string, err error) {
	s.log.WithField("pod", podID).WithError(err).Warn("pod left out of the stats: its agent did not answer in time")
}

func u64(v uint64) *runtimeapi.UInt64Value { return &runtimeapi.UInt64Value{Value: v} }

// toCRIStats maps one container's usage, with its identity for kubelet.
func (s *Server) toCRIStats(c *sandbox.Container, st *sandbox.Stats) *runtimeapi.ContainerStats {
	ts := st.Timestamp.UnixNano()
	out := &runtimeapi.ContainerStats{
		Attributes: containerAttributes(c),
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
