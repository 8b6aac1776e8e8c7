package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ListPodSandboxStats reports the stats of the pods the filter selects.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListPodSandboxStatsResponse{}
	for _, p := range s.pods.Pods() {
		if f.GetId() != "" && !strings.HasPrefix(p.ID, f.GetId()) || !labelsMatch(p.PodConfig().GetLabels(), f.GetLabelSelector()) {
			continue
		}
		resp.Stats = append(resp.Stats, s.podStats(ctx, &p))
	}
	return resp, nil
}
