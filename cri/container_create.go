package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer creates a container in a running pod; it does not run it.
func (s *Server) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, fieldInvalid("pod_sandbox_id", "is required")
	}
	if err := validateContainerConfig("config", req.GetConfig()); err != nil {
		return nil, err
	}
	pod, err := s.pods.Pod(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if err := validateContainerInPod(req, &pod); err != nil {
		return nil, err
	}
	id, err := s.pods.CreateContainer(ctx, req.GetPodSandboxId(), req.GetConfig(), req.GetSandboxConfig())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}
