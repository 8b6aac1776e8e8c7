package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PortForward returns the streaming URL that forwards ports into the pod.
func (s *Server) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	p, err := s.pods.Pod(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	req.PodSandboxId = p.ID
	return s.streaming.GetPortForward(req)
}
