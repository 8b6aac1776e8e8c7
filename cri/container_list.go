package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ListContainers lists containers, filtered by id, pod, state and labels.
func (s *Server) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListContainersResponse{}
	for _, c := range s.pods.Containers() {
		ctr := toCRIContainer(&c)
		switch {
		case f.GetId() != "" && !strings.HasPrefix(c.ID, f.GetId()):
		case f.GetPodSandboxId() != "" && !strings.HasPrefix(c.PodID, f.GetPodSandboxId()):
		case f.GetState() != nil && f.GetState().GetState() != ctr.State:
		case !labelsMatch(ctr.Labels, f.GetLabelSelector()):
		default:
			resp.Containers = append(resp.Containers, ctr)
		}
	}
	return resp, nil
}
