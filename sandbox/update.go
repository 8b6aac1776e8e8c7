package sandbox

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
)

// guestOverheadMiB is memory the guest kernel and agent need besides containers.
const guestOverheadMiB = 128

// updateContainerResources applies new limits to the container's cgroup in the
// guest, first growing the VM (vCPUs, memory) when a limit exceeds it, within
// the handler's hotplug limits.
func (m *Manager) updateContainerResources(ctx context.Context, id string, res *runtimeapi.LinuxContainerResources) error {
	c, err := m.Container(id)
	if err != nil {
		return err
	}
	if c.State == StateExited {
		return fmt.Errorf("%w: container %s has exited", errdefs.ErrFailedPrecondition, c.ID)
	}
	rt, err := m.runtime(c.PodID)
	if err != nil {
		return err
	}
	if res == nil {
		return fmt.Errorf("%w: no linux resources given", errdefs.ErrInvalidArgument)
	}
	if err := m.growVM(ctx, c.PodID, rt, res); err != nil {
		return err
	}
	data, err := json.Marshal(ocispec.Resources(res))
	if err != nil {
		return err
	}
	if _, err := rt.agent.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: c.ID, Resources: data}); err != nil {
		return fmt.Errorf("agent UpdateContainer: %w", err)
	}
	_, err = m.containers.update(c.ID, func(c *Container) error {
		// The decoded config is shared by every copy of the record: change a copy.
		cfg := proto.CloneOf(c.ContainerConfig())
		if cfg.Linux == nil {
			cfg.Linux = &runtimeapi.LinuxContainerConfig{}
		}
		cfg.Linux.Resources = res
		raw, err := marshalConfig(cfg)
		c.Config = raw
		return err
	})
	return err
}

// fitResources returns the VM size (never below vcpus and memMiB) that
// limits res need, within the handler's hotplug limits: a CPU quota of 1.5
// cores needs 2 vCPUs, a memory limit needs itself plus the guest's own share.
func fitResources(vcpus uint32, memMiB uint64, h config.Handler, res *runtimeapi.LinuxContainerResources) (uint32, uint64) {
	if q, p := res.GetCpuQuota(), res.GetCpuPeriod(); q > 0 && p > 0 {
		vcpus = max(vcpus, min(uint32((q+p-1)/p), h.MaxVCPUs))
	}
	if limit := uint64(res.GetMemoryLimitInBytes()) >> 20; limit > 0 {
		memMiB = max(memMiB, min(limit+guestOverheadMiB, h.MaxMemoryMiB))
	}
	return vcpus, memMiB
}

// growVM hotplugs vCPUs and memory so the VM can honour the new limits.
func (m *Manager) growVM(ctx context.Context, podID string, rt *podRuntime, res *runtimeapi.LinuxContainerResources) error {
	pod, err := m.Pod(podID)
	if err != nil {
		return err
	}
	if pod.isHostPod() {
		return nil // no VM to grow: limits are the containers' own cgroups'
	}
	grown, err := growToFit(ctx, rt, m.opts.Runtime.Handlers[pod.Handler], res)
	if err != nil || !grown {
		return err
	}
	st := rt.vmm.State()
	_, err = m.pods.update(podID, func(p *Pod) error { p.VM = st; return nil })
	m.opts.Log.WithField("pod", podID).WithField("vcpus", st.VCPUs).WithField("memory_mib", st.MemoryMiB).Info("VM grown for new limits")
	return err
}

// growToFit hotplugs vCPUs and memory into a running VM until it fits res
// (within the handler's limits) and has the guest bring them online. It
// says whether the VM grew.
func growToFit(ctx context.Context, rt *podRuntime, h config.Handler, res *runtimeapi.LinuxContainerResources) (bool, error) {
	st := rt.vmm.State()
	vcpus, mem := fitResources(st.VCPUs, st.MemoryMiB, h, res)
	if vcpus == st.VCPUs && mem == st.MemoryMiB {
		return false, nil
	}
	if err := rt.vmm.Resize(ctx, vcpus, mem); err != nil {
		return false, fmt.Errorf("grow the VM to %d vCPUs, %d MiB: %w", vcpus, mem, err)
	}
	if _, err := rt.agent.OnlineCPUMem(ctx, &emptypb.Empty{}); err != nil {
		return false, fmt.Errorf("agent OnlineCPUMem: %w", err)
	}
	return true, nil
}

// updatePodResources grows the pod's VM to fit new pod-level limits (kubelet
// sends them after resizing the pod; best effort by CRI's contract).
func (m *Manager) updatePodResources(ctx context.Context, podID string, res *runtimeapi.LinuxContainerResources) error {
	pod, err := m.Pod(podID)
	if err != nil {
		return err
	}
	rt, err := m.runtime(pod.ID)
	if err != nil {
		return err
	}
	if res == nil {
		return nil
	}
	return m.growVM(ctx, pod.ID, rt, res)
}
