package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ListContainerStats reports the stats of the containers the filter selects.
func (s *Server) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListContainerStatsResponse{}
	for _, c := range s.podContainers("", f.GetLabelSelector()) {
		if f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()) || f.GetPodSandboxId() != "" && !strings.HasPrefix(c.PodID, f.GetPodSandboxId()) {
			continue
		}
		st, err := s.pods.ContainerStats(ctx, c.ID)
		if err != nil {
			continue // a container going away while listed is not an error
		}
		resp.Stats = append(resp.Stats, s.toCRIStats(&c, st))
	}
	return resp, nil
}
