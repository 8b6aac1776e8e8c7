package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// StopPod stops every container, shuts the VM down and detaches the network.
// Stopping a stopped or unknown pod succeeds (kubelet retries).
func (m *Manager) StopPod(ctx context.Context, id string) error {
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

	var errs []error
	if rt != nil {
		// The agent kills the containers and powers the guest off; the VMM stop
		// that follows is then quick, and forceful if the guest did not comply.
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := rt.agent.DestroySandbox(dctx, &agentapi.DestroySandboxRequest{SandboxId: id}); err != nil {
			log.WithError(err).Warn("agent DestroySandbox failed, stopping the VM regardless")
		}
		cancel()
		rt.client.Close()
		select {
		case <-rt.vmm.Done():
		case <-time.After(3 * time.Second):
		}
		if err := rt.vmm.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop VM: %w", err))
		}
		rt.closeOutputs()
	}
	if pod.NetnsPath != "" {
		if err := m.opts.Network.Detach(ctx, id, pod.NetnsPath); err != nil {
			errs = append(errs, fmt.Errorf("detach network: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	now := time.Now().UnixNano()
	for _, c := range m.containers.list() {
		if c.PodID == id && c.State != StateExited {
			_, _ = m.containers.update(c.ID, func(c *Container) error {
				c.State, c.FinishedAt = StateExited, now
				if c.ExitCode == 0 && c.StartedAt != 0 {
					c.ExitCode, c.Reason = 137, "PodStopped"
				}
				return nil
			})
		}
	}
	_, err = m.pods.update(id, func(p *Pod) error { p.State, p.NetnsPath = StateNotReady, ""; return nil })
	if err == nil && rt != nil {
		m.events.publish(EventStopped, id, id)
	}
	if err == nil && rt != nil {
		log.Info("pod stopped")
	}
	return err
}

// RemovePod stops the pod if needed and removes it with its containers.
// Removing an unknown pod succeeds.
func (m *Manager) RemovePod(ctx context.Context, id string) error {
	pod, err := m.Pod(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopPod(ctx, pod.ID); err != nil {
		return err
	}
	for _, c := range m.containers.list() {
		if c.PodID == pod.ID {
			if err := m.RemoveContainer(ctx, c.ID); err != nil {
				return err
			}
		}
	}
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
