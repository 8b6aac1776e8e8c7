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
	UpdateContainerResources(ctx context.Context, id string, res *runtimeapi.LinuxContainerResources) error
	Subscribe() (<-chan sandbox.Event, func())
	UpdatePodResources(ctx context.Context, podID string, res *runtimeapi.LinuxContainerResources) error
}

func podState(s string) runtimeapi.PodSandboxState {
	if s == sandbox.StateReady {
		return runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}

func containerState(s string) runtimeapi.ContainerState {
	switch s {
	case sandbox.StateCreated:
		return runtimeapi.ContainerState_CONTAINER_CREATED
	case sandbox.StateRunning:
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	case sandbox.StateExited:
		return runtimeapi.ContainerState_CONTAINER_EXITED
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}

func toCRIPod(p *sandbox.Pod) *runtimeapi.PodSandbox {
	cfg := p.PodConfig()
	return &runtimeapi.PodSandbox{
		Id: p.ID, Metadata: cfg.GetMetadata(), State: podState(p.State), CreatedAt: p.CreatedAt,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(), RuntimeHandler: p.Handler,
	}
}

func toCRIContainer(c *sandbox.Container) *runtimeapi.Container {
	cfg := c.ContainerConfig()
	return &runtimeapi.Container{
		Id: c.ID, PodSandboxId: c.PodID, Metadata: cfg.GetMetadata(),
		Image:    &runtimeapi.ImageSpec{Image: c.ImageID, UserSpecifiedImage: c.ImageRef},
		ImageRef: c.ImageID, ImageId: c.ImageID,
		State: containerState(c.State), CreatedAt: c.CreatedAt,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
	}
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
