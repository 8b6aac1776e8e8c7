package cri

import (
	"context"
	"net"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdateRuntimeConfig records the node's pod CIDR, which CNI gets with each pod.
func (s *Server) UpdateRuntimeConfig(_ context.Context, req *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	cidr := req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr()
	if cidr == "" {
		return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
	}
	// kubelet sends "v4cidr,v6cidr" on dual-stack nodes.
	for _, c := range strings.Split(cidr, ",") {
		if _, _, err := net.ParseCIDR(strings.TrimSpace(c)); err != nil {
			return nil, invalid("pod CIDR %q: %v", c, err)
		}
	}
	s.mu.Lock()
	changed := s.podCIDR != cidr
	s.podCIDR = cidr
	s.mu.Unlock()
	if changed {
		s.log.WithField("pod_cidr", cidr).Info("pod CIDR updated")
	}
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}
