package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// stopPod stops every container, shuts the VM down and detaches the network.
// Stopping a stopped or unknown pod succeeds (kubelet retries). The record
// says a stop is under way (CleanupPending) before anything is torn down and
// keeps saying so until everything is: a stop that fails, or a cocoond killed
// in the middle, is finished by the next Stop/Remove or by a restart.
func (m *Manager) stopPod(ctx context.Context, id string) error {
	pod, err := m.Pod(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	id = pod.ID
	log := m.opts.Log.WithField("pod", id)
	m.mu.Lock()
	rt := m.live[id]
	delete(m.live, id)
	m.mu.Unlock()

	// A pod already stopped (nothing recorded to tear down) needs no mark.
	hasWork := rt != nil || pod.State != StateNotReady || pod.NetnsPath != "" || pod.VM != nil
	if hasWork && pod.CleanupPending == "" {
		if _, err := m.pods.update(id, func(p *Pod) error {
			p.State, p.CleanupPending = StateNotReady, "stopping"
			return nil
		}); err != nil {
			m.mu.Lock()
			if rt != nil {
				m.live[id] = rt
			}
			m.mu.Unlock()
			return err
		}
	}

	var errs []error
	if rt != nil {
		// The agent kills the containers and powers the guest off; the VMM stop
		// that follows is then quick, and forceful if the guest did not comply.
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := rt.agent.DestroySandbox(dctx, &agentapi.DestroySandboxRequest{SandboxId: id}); err != nil {
			log.WithError(err).Warn("agent DestroySandbox failed, stopping the VM regardless")
		}
		cancel()
		if rt.client != nil {
			rt.client.Close()
		}
		select {
		case <-rt.vmm.Done():
		case <-time.After(3 * time.Second):
		}
		if err := rt.vmm.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop VM: %w", err))
		}
		rt.closeOutputs()
	}
	// Whatever of the VM is left (its process after a restart that could not
	// adopt it, a half-made VM of a run cut short, its run dir) goes too.
	if err := m.removeVMOf(ctx, &pod); err != nil {
		errs = append(errs, fmt.Errorf("remove VM: %w", err))
	}
	if len(errs) == 0 { // with the VM's processes gone only
		if err := m.removePodCgroup(ctx, &pod); err != nil {
			errs = append(errs, err)
		}
	}
	pipeline.CrashPoint("stop-pod/vm-stopped")
	netnsPath := pod.NetnsPath
	if netnsPath == "" {
		// A run cut short before recording it: the network knows.
		if attached, err := m.opts.Network.Attached(); err == nil {
			netnsPath = attached[id]
		}
	}
	if netnsPath != "" {
		if err := m.opts.Network.Detach(ctx, id, netnsPath); err != nil {
			errs = append(errs, fmt.Errorf("detach network: %w", err))
		}
	}
	pipeline.CrashPoint("stop-pod/network-detached")
	if err := errors.Join(errs...); err != nil {
		_, _ = m.pods.update(id, func(p *Pod) error { p.CleanupPending = err.Error(); return nil })
		log.WithError(err).Warn("pod stop left work undone; the next stop or a restart retries it")
		return err
	}
	ended := podStoppedExit(time.Now().UnixNano())
	for _, c := range m.containers.list() {
		if c.PodID == id {
			m.recordExit(c.ID, ended)
		}
	}
	_, err = m.pods.update(id, func(p *Pod) error {
		p.State, p.NetnsPath, p.VM, p.Cgroup, p.CleanupPending = StateNotReady, "", nil, nil, ""
		return nil
	})
	if err == nil && rt != nil {
		m.events.publish(EventStopped, id, id)
	}
	if err == nil && rt != nil {
		log.Info("pod stopped")
	}
	return err
}

// removeVMOf removes what is left of a pod's VM without a live handle on it:
// through its driver from the pod's record or the VM's own record, or, when
// neither names a process, from the processes that name its run dir.
func (m *Manager) removeVMOf(ctx context.Context, pod *Pod) error {
	runDir := m.vmRunDir(pod.ID)
	st := pod.VM
	if st == nil {
		st, _ = vm.LoadState(runDir, m.opts.Log.WithField("pod", pod.ID))
	}
	if st == nil {
		if _, err := os.Stat(runDir); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		st = &vm.State{ID: pod.ID, RunDir: runDir}
	}
	if filepath.Dir(filepath.Clean(st.RunDir)) != filepath.Clean(m.opts.VMDir) {
		// A record never sends the removal outside the VM dir.
		cp := *st
		cp.RunDir = runDir
		st = &cp
	}
	if _, err := os.Stat(st.RunDir); errors.Is(err, os.ErrNotExist) && st.Pid != 0 && !(vm.Process{Pid: st.Pid, StartTime: st.StartTime}).Alive() {
		return nil // stopped and removed already
	}
	return vm.RemoveVM(ctx, st, m.opts.Drivers[st.Driver])
}

// removePod stops the pod if needed and removes it with its containers.
// Removing an unknown pod succeeds.
func (m *Manager) removePod(ctx context.Context, id string) error {
	pod, err := m.Pod(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.stopPod(ctx, pod.ID); err != nil {
		return err
	}
	for _, c := range m.containers.list() {
		if c.PodID != pod.ID {
			continue
		}
		// The pod is stopped: nothing of its containers runs. reclaimContainer
		// also takes a removal cut short by a crash (storage gone, record
		// left) in its stride.
		if err := m.reclaimContainer(ctx, c); err != nil {
			return err
		}
		if c.State != StateCreating {
			m.events.publish(EventDeleted, c.ID, c.PodID)
		}
	}
	pipeline.CrashPoint("remove-pod/containers-removed")
	if err := removePodDirs(pod.RunDir, pod.ShareDir); err != nil {
		return err
	}
	m.podNames.release(pod.Name)
	if err := m.pods.remove(pod.ID); err != nil {
		return err
	}
	m.events.publish(EventDeleted, pod.ID, pod.ID)
	m.opts.Log.WithField("pod", pod.ID).Info("pod removed")
	return nil
}
