package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// podManager is what the runtime RPCs need from sandbox/.
type podManager interface {
	RunPod(ctx context.Context, cfg *runtimeapi.PodSandboxConfig, handler string) (string, error)
	StopPod(ctx context.Context, id string) error
	RemovePod(ctx context.Context, id string) error
	Pod(id string) (sandbox.Pod, error)
	Pods() []sandbox.Pod

	CreateContainer(ctx context.Context, podID string, cfg *runtimeapi.ContainerConfig, podCfg *runtimeapi.PodSandboxConfig) (string, error)
	StartContainer(ctx context.Context, id string) error
	StopContainer(ctx context.Context, id string, timeout time.Duration) error
	RemoveContainer(ctx context.Context, id string) error
	Container(id string) (sandbox.Container, error)
	Containers() []sandbox.Container
	ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration) (*sandbox.ExecResult, error)
	ReopenContainerLog(id string) error
	ContainerStats(ctx context.Context, id string) (*sandbox.Stats, error)
	PodNetworkStats(id string) (*sandbox.NetworkStats, error)
	UpdateContainerResources(ctx context.Context, id string, res *runtimeapi.LinuxContainerResources) error
	Subscribe() (<-chan sandbox.Event, func())
	UpdatePodResources(ctx context.Context, podID string, res *runtimeapi.LinuxContainerResources) error
}

// labelsMatch reports whether every selector label is present with its value.
func labelsMatch(labels, selector map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
