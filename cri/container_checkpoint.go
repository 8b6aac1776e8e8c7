package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// CheckpointContainer is not supported: a container's state lives in its VM,
// and checkpointing one container out of a VM is not something we do.
func (s *Server) CheckpointContainer(context.Context, *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	return nil, fmt.Errorf("%w: CheckpointContainer is not supported by cocoon: containers run inside per-pod VMs and are not checkpointed one by one", errdefs.ErrNotImplemented)
}
