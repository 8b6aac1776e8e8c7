package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Status reports RuntimeReady and NetworkReady. NetworkReady is false, with the
// reason, until a usable CNI configuration and its plugins are found.
func (s *Server) Status(_ context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	network := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	if err := s.network.Ready(); err != nil {
		network.Status = false
		network.Reason = "NetworkPluginNotReady"
		network.Message = err.Error()
	}
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			network,
		}},
		RuntimeHandlers: runtimeHandlers(s.opts.Handlers),
		Features:        &runtimeapi.RuntimeFeatures{SupplementalGroupsPolicy: true},
	}
	if req.GetVerbose() {
		resp.Info = s.opts.StatusInfo
	}
	return resp, nil
}

// runtimeHandlers lists the default handler ("") and every named one. Every
// handler makes read-only mounts recursive on request (on the host side of
// the share, see sandbox.enforceReadOnly); user namespaces are not there yet.
func runtimeHandlers(names []string) []*runtimeapi.RuntimeHandler {
	features := func() *runtimeapi.RuntimeHandlerFeatures {
		return &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: true}
	}
	out := []*runtimeapi.RuntimeHandler{{Name: "", Features: features()}}
	for _, n := range names {
		out = append(out, &runtimeapi.RuntimeHandler{Name: n, Features: features()})
	}
	return out
}
