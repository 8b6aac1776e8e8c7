package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

// Recover re-adopts what a previous cocoond left running: each READY pod's VM,
// its agent connection, its containers' log copying and exit watching. A pod
// whose VM died meanwhile becomes NOTREADY with its containers EXITED; VMs
// whose pod no longer exists are stopped.
func (m *Manager) Recover(ctx context.Context) error {
	var errs []error
	for _, p := range m.pods.list() {
		if p.State != StateReady || p.VM == nil {
			continue
		}
		if err := m.recoverPod(ctx, p); err != nil {
			m.opts.Log.WithField("pod", p.ID).WithError(err).Warn("pod could not be recovered")
			m.markDead(p.ID, fmt.Sprintf("lost across a cocoond restart: %v", err))
		}
	}
	if err := m.removeStrayVMs(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := m.removeStrayNetworks(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := m.removeStrayShares(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m *Manager) recoverPod(ctx context.Context, p Pod) error {
	driver, ok := m.opts.Drivers[p.VM.Driver]
	if !ok {
		return fmt.Errorf("VMM %q is not configured", p.VM.Driver)
	}
	v, err := driver.Adopt(ctx, p.VM)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, err := m.waitAgent(actx, v)
	if err != nil {
		_ = v.Stop(ctx)
		return err
	}
	rt := &podRuntime{vmm: v, client: client, agent: agentapi.NewAgentClient(client), outputs: map[string]*output{}}
	log := m.opts.Log.WithField("pod", p.ID)
	for _, c := range m.containers.list() {
		if c.PodID != p.ID || c.State == StateExited {
			continue
		}
		o, err := newOutput(c.LogPath)
		if err != nil {
			return err
		}
		streams := []agentapi.ReadOutputRequest_Stream{agentapi.ReadOutputRequest_STDOUT}
		if !c.ContainerConfig().GetTty() {
			streams = append(streams, agentapi.ReadOutputRequest_STDERR)
		}
		for _, s := range streams {
			if err := o.copyStream(context.Background(), rt.agent, c.ID, s, log.WithField("container", c.ID)); err != nil {
				return fmt.Errorf("container %s output: %w", c.ID, err)
			}
		}
		rt.outputs[c.ID] = o
		if c.State == StateRunning {
			go m.waitExit(rt, c.ID)
		}
	}
	m.mu.Lock()
	m.live[p.ID] = rt
	m.mu.Unlock()
	go m.watchVM(p.ID, rt)
	log.Info("pod re-adopted")
	return nil
}

// removeStrayNetworks detaches networks no pod record claims (a crash between
// attaching a pod's network and persisting the pod, or after removing the
// record), so their netns, veth and IP lease do not outlive them.
func (m *Manager) removeStrayNetworks(ctx context.Context) error {
	attached, err := m.opts.Network.Attached()
	if err != nil {
		return err
	}
	var errs []error
	for id, netns := range attached {
		if _, ok := m.pods.get(id); ok {
			continue
		}
		m.opts.Log.WithField("pod", id).Warn("detaching a network no pod claims")
		if err := m.opts.Network.Detach(ctx, id, netns); err != nil {
			errs = append(errs, fmt.Errorf("stray network of %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// removeStrayVMs stops VMs under the run dir that no pod record claims (a
// crash between booting a VM and persisting its pod).
func (m *Manager) removeStrayVMs(ctx context.Context) error {
	states, err := vm.LoadStates(m.opts.VMDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, st := range states {
		if _, ok := m.pods.get(st.ID); ok {
			continue
		}
		if err := vm.RemoveVM(ctx, st, m.opts.Drivers[st.Driver]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
