package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ListPodSandbox lists pods, filtered by id (prefix), state and labels.
func (s *Server) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListPodSandboxResponse{}
	for _, p := range s.pods.Pods() {
		pod := toCRIPod(&p)
		if f.GetId() != "" && !strings.HasPrefix(p.ID, f.GetId()) {
			continue
		}
		if f.GetState() != nil && f.GetState().GetState() != pod.State {
			continue
		}
		if !labelsMatch(pod.Labels, f.GetLabelSelector()) {
			continue
		}
		resp.Items = append(resp.Items, pod)
	}
	return resp, nil
}
