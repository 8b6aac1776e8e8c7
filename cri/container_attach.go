package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Attach returns the streaming URL where the client attaches to the container.
func (s *Server) Attach(ctx context.Context, req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	c, err := s.pods.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	req.ContainerId = c.ID
	return s.streaming.GetAttach(req)
}
