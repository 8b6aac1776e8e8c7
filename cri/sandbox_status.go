package cri

import (
	"context"
	"encoding/json"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
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

func podSandboxStatus(p *sandbox.Pod) *runtimeapi.PodSandboxStatus {
	cfg := p.PodConfig()
	st := &runtimeapi.PodSandboxStatus{
		Id: p.ID, Metadata: cfg.GetMetadata(), State: podState(p.State), CreatedAt: p.CreatedAt,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(), RuntimeHandler: p.Handler,
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}
	if len(p.IPs) > 0 {
		net := &runtimeapi.PodSandboxNetworkStatus{Ip: stripPrefix(p.IPs[0])}
		for _, ip := range p.IPs[1:] {
			net.AdditionalIps = append(net.AdditionalIps, &runtimeapi.PodIP{Ip: stripPrefix(ip)})
		}
		st.Network = net
	}
	return st
}

func stripPrefix(cidr string) string {
	ip, _, _ := strings.Cut(cidr, "/")
	return ip
}
