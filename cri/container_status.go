package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ContainerStatus reports a container's state, exit, image, mounts and log path.
func (s *Server) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	c, err := s.pods.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: containerStatus(&c)}
	if req.GetVerbose() {
		info, _ := json.Marshal(map[string]any{"pod": c.PodID, "rootfs": c.Rootfs, "binds": c.Binds})
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}
