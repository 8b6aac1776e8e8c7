package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// ListContainerStats reports the stats of the containers the filter selects.
func (s *Server) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	// One query per pod, concurrently: a silent agent delays only its pod.
	var podIDs []string
	byPod := map[string][]sandbox.Container{}
	for _, c := range s.podContainers("", f.GetLabelSelector()) {
		if f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()) || f.GetPodSandboxId() != "" && !strings.HasPrefix(c.PodID, f.GetPodSandboxId()) {
			continue
		}
		if _, seen := byPod[c.PodID]; !seen {
			podIDs = append(podIDs, c.PodID)
		}
		byPod[c.PodID] = append(byPod[c.PodID], c)
	}
	perPod, _ := eachPodStats(ctx, podIDs, func(ctx context.Context, podID string) ([]*runtimeapi.ContainerStats, error) {
		var out []*runtimeapi.ContainerStats
		for _, c := range byPod[podID] {
			st, err := s.pods.ContainerStats(ctx, c.ID)
			if agentSilent(err) {
				return nil, err
			}
			if err != nil {
				continue // a container going away while listed is not an error
			}
			out = append(out, s.toCRIStats(&c, st))
		}
		return out, nil
	}, s.logStatsSkipped)
	resp := &runtimeapi.ListContainerStatsResponse{}
	for _, stats := range perPod {
		resp.Stats = append(resp.Stats, stats...)
	}
	return resp, nil
}
