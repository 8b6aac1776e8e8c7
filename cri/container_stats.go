package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ContainerStats reports one container's CPU, memory and writable layer usage.
func (s *Server) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	c, err := s.pods.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	st, err := s.pods.ContainerStats(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ContainerStatsResponse{Stats: s.toCRIStats(&c, st)}, nil
}
