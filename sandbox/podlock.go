package sandbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podLocks serialises the operations on one pod: RunPodSandbox's undo,
// StopPodSandbox, RemovePodSandbox and every container change in the pod take
// its lock, so a stop racing a start, or a remove racing a create, ends in one
// of the orders, never in a mix. Reads (status, lists, stats, exec) take no
// lock: they see the last record written. Waiting for the lock honours the
// caller's context, so a pod stuck in a long stop costs the caller its own
// deadline, never more, and other pods are never involved.
type podLocks struct {
	mu    sync.Mutex
	locks map[string]*podLock
}

type podLock struct {
	held chan struct{} // a token: full while someone holds the lock
	refs int           // holders and waiters, so the entry goes when unused
}

// lock takes the pod's lock or returns the context's error.
func (l *podLocks) lock(ctx context.Context, podID string) (unlock func(), err error) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*podLock{}
	}
	pl := l.locks[podID]
	if pl == nil {
		pl = &podLock{held: make(chan struct{}, 1)}
		l.locks[podID] = pl
	}
	pl.refs++
	l.mu.Unlock()

	release := func() {
		l.mu.Lock()
		if pl.refs--; pl.refs == 0 {
			delete(l.locks, podID)
		}
		l.mu.Unlock()
	}
	select {
	case pl.held <- struct{}{}:
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("waiting for another operation on pod %s: %w", podID, ctx.Err())
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-pl.held
			release()
		})
	}, nil
}

// size is how many pods have holders or waiters (tests check nothing leaks).
func (l *podLocks) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.locks)
}

// The operations that change a pod or its containers, each under the pod's
// lock. The unexported functions they wrap do the work and call each other
// (a removal stops first) without taking it again.

// StopPod stops every container, shuts the VM down and detaches the network.
// Stopping a stopped or unknown pod succeeds (kubelet retries).
func (m *Manager) StopPod(ctx context.Context, id string) error {
	return m.withPod(ctx, id, func(id string) error { return m.stopPod(ctx, id) })
}

// RemovePod stops the pod if needed and removes it with its containers.
// Removing an unknown pod succeeds.
func (m *Manager) RemovePod(ctx context.Context, id string) error {
	return m.withPod(ctx, id, func(id string) error { return m.removePod(ctx, id) })
}

// CreateContainer prepares a container in a running pod (see createContainer).
func (m *Manager) CreateContainer(ctx context.Context, podID string, cfg *runtimeapi.ContainerConfig, podCfg *runtimeapi.PodSandboxConfig) (string, error) {
	var id string
	err := m.withPod(ctx, podID, func(podID string) (err error) {
		id, err = m.createContainer(ctx, podID, cfg, podCfg)
		return err
	})
	return id, err
}

// StartContainer runs a created container and watches it until it exits.
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	return m.withContainer(ctx, id, func(id string) error { return m.startContainer(ctx, id) })
}

// StopContainer sends the stop signal, waits up to timeout, then kills every
// process of the container. Stopping a stopped or unknown container succeeds.
func (m *Manager) StopContainer(ctx context.Context, id string, timeout time.Duration) error {
	return m.withContainer(ctx, id, func(id string) error { return m.stopContainer(ctx, id, timeout) })
}

// RemoveContainer removes a container (killing it first when running) with
// its root filesystem and binds. Removing an unknown container succeeds.
func (m *Manager) RemoveContainer(ctx context.Context, id string) error {
	return m.withContainer(ctx, id, func(id string) error { return m.removeContainer(ctx, id) })
}

// UpdateContainerResources applies new limits to a running container.
func (m *Manager) UpdateContainerResources(ctx context.Context, id string, res *runtimeapi.LinuxContainerResources) error {
	return m.withContainer(ctx, id, func(id string) error { return m.updateContainerResources(ctx, id, res) })
}

// UpdatePodResources grows the pod's VM to fit new pod-level limits.
func (m *Manager) UpdatePodResources(ctx context.Context, podID string, res *runtimeapi.LinuxContainerResources) error {
	return m.withPod(ctx, podID, func(podID string) error { return m.updatePodResources(ctx, podID, res) })
}

// withPod runs op under the lock of the pod id names (a full ID or a unique
// prefix). An unknown pod goes to op as it is, which answers for it.
func (m *Manager) withPod(ctx context.Context, id string, op func(id string) error) error {
	if p, err := m.Pod(id); err == nil {
		id = p.ID
	}
	unlock, err := m.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	return op(id)
}

// withContainer runs op under the lock of the container's pod.
func (m *Manager) withContainer(ctx context.Context, id string, op func(id string) error) error {
	c, err := m.Container(id)
	if err != nil {
		return op(id)
	}
	unlock, err := m.locks.lock(ctx, c.PodID)
	if err != nil {
		return err
	}
	defer unlock()
	return op(c.ID)
}
