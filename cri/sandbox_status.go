package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PodSandboxStatus reports a pod's state, network and, verbose, its VM.
func (s *Server) PodSandboxStatus(ctx context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	p, err := s.pods.Pod(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: podSandboxStatus(&p)}
	if req.GetVerbose() {
		info, _ := json.Marshal(map[string]any{"runDir": p.RunDir, "netns": p.NetnsPath, "vm": p.VM, "reason": p.Reason})
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}
