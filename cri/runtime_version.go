package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/version"
)

// kubeletAPIVersion is the legacy "version" field kubelet still prints.
const kubeletAPIVersion = "0.1.0"

// Version reports the runtime's name and versions.
func (s *Server) Version(_ context.Context, _ *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version:           kubeletAPIVersion,
		RuntimeName:       version.RuntimeName,
		RuntimeVersion:    version.Version,
		RuntimeApiVersion: version.CRIAPIVersion,
	}, nil
}
