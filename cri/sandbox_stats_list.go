package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// ListPodSandboxStats reports the stats of the pods the filter selects.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := req.GetFilter()
	var podIDs []string
	pods := map[string]*sandbox.Pod{}
	for _, p := range s.pods.Pods() {
		if f.GetId() != "" && !strings.HasPrefix(p.ID, f.GetId()) || !labelsMatch(p.PodConfig().GetLabels(), f.GetLabelSelector()) {
			continue
		}
		podIDs = append(podIDs, p.ID)
		pods[p.ID] = &p
	}
	// Concurrently, each pod with its deadline: a silent agent leaves its
	// pod out and delays no other.
	stats, ok := eachPodStats(ctx, podIDs, func(ctx context.Context, podID string) (*runtimeapi.PodSandboxStats, error) {
		return s.podStats(ctx, pods[podID])
	}, s.logStatsSkipped)
	resp := &runtimeapi.ListPodSandboxStatsResponse{}
	for i, st := range stats {
		if ok[i] {
			resp.Stats = append(resp.Stats, st)
		}
	}
	return resp, nil
}
