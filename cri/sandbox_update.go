package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdatePodSandboxResources grows the pod's VM when the pod's new limits need it.
func (s *Server) UpdatePodSandboxResources(ctx context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod sandbox id is empty")
	}
	if err := validateResources("overhead", req.GetOverhead()); err != nil {
		return nil, err
	}
	if err := validateResources("resources", req.GetResources()); err != nil {
		return nil, err
	}
	if err := s.pods.UpdatePodResources(ctx, req.GetPodSandboxId(), req.GetResources()); err != nil {
		return nil, err
	}
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}
