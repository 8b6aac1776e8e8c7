package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/sandbox/podcgroup"
	"github.com/cocoon-runtime/cocoon/vm"
)

// podCgroups puts a pod's host processes in the cgroup kubelet names for the
// pod (podcgroup.Manager), so kubelet's QoS, eviction and stats see them and
// nothing of a pod stays in cocoond's own cgroup.
type podCgroups interface {
	// For derives the pod cgroup from kubelet's cgroup_parent ("" = default).
	For(parent, podID string) (podcgroup.Ref, error)
	// Create makes the cgroup ahead of its processes where the driver can.
	Create(ref podcgroup.Ref) error
	// Join moves processes, with everything they forked, into the cgroup.
	Join(ctx context.Context, ref podcgroup.Ref, pids ...int) error
	// Remove removes the cgroup once its processes are gone; idempotent.
	Remove(ctx context.Context, ref podcgroup.Ref) error
	// Kill ends every process left in the cgroup and those below it.
	Kill(ctx context.Context, ref podcgroup.Ref) error
	// Strays lists pod cgroups cocoond made that claimed does not claim.
	Strays(claimed func(podID string) bool) ([]podcgroup.Ref, error)
}

// cgroupStep is RunPod's "cgroup" step. It records the pod cgroup before
// making it (a record names a resource before it exists, so Stop and Recover
// find it), and its undo removes it. It runs before the VM is created, so in
// the reverse unwinding that undo runs after the VM's has stopped the
// processes. wrap is RunPod's undo tracker.
func (m *Manager) cgroupStep(pod *Pod, parent string, wrap func(func() error) func() error) pipeline.Step {
	return pipeline.Step{Name: "cgroup", Run: func(ctx context.Context) (func() error, error) {
		if m.opts.Cgroups == nil {
			return nil, nil
		}
		ref, err := m.opts.Cgroups.For(parent, pod.ID)
		if err != nil {
			return nil, err
		}
		if _, err := m.pods.update(pod.ID, func(p *Pod) error { p.Cgroup = &ref; return nil }); err != nil {
			return nil, err
		}
		pod.Cgroup = &ref
		undo := wrap(func() error { return m.clearCgroup(context.Background(), ref) })
		return undo, m.opts.Cgroups.Create(ref)
	}}
}

// joinPodCgroup moves a VM's processes (the VMM and its helpers, such as
// virtiofsd, with whatever they forked; a host pod's agent) into the pod's
// cgroup: its sandbox leaf with cgroupfs (podcgroup.Ref.ProcsPath), so the
// pod cgroup itself holds only cgroups, as cgroup v2 requires of a host
// pod's, whose containers' cgroups go below it. RunPod calls
// it right after the VM is created, while QEMU still waits paused (-S): the
// guest's memory, touched from boot on, is charged to the pod cgroup, while
// what the VMM allocated before the move stays charged where it started
// (neither cgroup v1 nor v2 moves charges by default). The warm pool calls
// it at claim to move an already-running VM into the claiming pod's cgroup.
func (m *Manager) joinPodCgroup(ctx context.Context, ref *podcgroup.Ref, st *vm.State) error {
	if m.opts.Cgroups == nil || ref == nil {
		return nil
	}
	if st == nil || st.Pid == 0 {
		return fmt.Errorf("pod cgroup %s: the VM has no process to place", ref)
	}
	return m.opts.Cgroups.Join(ctx, *ref, st.Pids()...)
}

// removePodCgroup removes a stopped pod's cgroup.
func (m *Manager) removePodCgroup(ctx context.Context, pod *Pod) error {
	if m.opts.Cgroups == nil || pod.Cgroup == nil {
		return nil
	}
	return m.clearCgroup(ctx, *pod.Cgroup)
}

// clearCgroup removes the cgroup of a pod whose VM or agent has stopped.
// Whatever is still in it belongs to a pod that is gone and is killed
// first: a host pod's containers are not the agent's children once it is
// gone, and a VM pod's virtiofsd worker can outlive its parent by a moment
// (seen once in 40 pod removals: StopPodSandbox failed "still holds
// processes").
func (m *Manager) clearCgroup(ctx context.Context, ref podcgroup.Ref) error {
	if err := m.opts.Cgroups.Kill(ctx, ref); err != nil {
		return fmt.Errorf("kill what is left of the pod: %w", err)
	}
	if err := m.opts.Cgroups.Remove(ctx, ref); err != nil {
		return fmt.Errorf("remove pod cgroup: %w", err)
	}
	return nil
}

// removeStrayCgroups removes the pod cgroups no pod record claims (a crash
// between making one and recording the pod, or after removing the record).
// It runs after the stray VMs are stopped, so those cgroups are empty.
func (m *Manager) removeStrayCgroups(ctx context.Context) error {
	if m.opts.Cgroups == nil {
		return nil
	}
	strays, err := m.opts.Cgroups.Strays(func(podID string) bool {
		_, ok := m.pods.get(podID)
		return ok
	})
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("finding stray pod cgroups: %w", err))
	}
	for _, ref := range strays {
		m.opts.Log.WithField("cgroup", ref.String()).Warn("removing a pod cgroup no pod claims")
		// Stray VMs are stopped by now; what is left is a lost host pod's.
		if err := m.clearCgroup(ctx, ref); err != nil {
			errs = append(errs, fmt.Errorf("stray pod cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}
