package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.podman.io/storage"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
)

// startContainer runs a created container and watches it until it exits.
func (m *Manager) startContainer(ctx context.Context, id string) error {
	c, err := m.Container(id)
	if err != nil {
		return err
	}
	if c.State != StateCreated {
		return fmt.Errorf("%w: container %s is %s, not created", errdefs.ErrFailedPrecondition, c.ID, c.State)
	}
	rt, err := m.runtime(c.PodID)
	if err != nil {
		return err
	}
	if _, err := rt.agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.ID}); err != nil {
		return fmt.Errorf("agent StartContainer: %w", err)
	}
	if _, err := m.containers.update(c.ID, func(c *Container) error {
		c.State, c.StartedAt = StateRunning, time.Now().UnixNano()
		return nil
	}); err != nil {
		return err
	}
	m.events.publish(EventStarted, c.ID, c.PodID)
	go m.waitExit(rt, c.ID)
	return nil
}

// waitExit records the container's exit once its output has drained.
func (m *Manager) waitExit(rt *podRuntime, id string) {
	// A long poll: it lasts as long as the container, and the pod's end ends it.
	res, err := rt.agent.WaitProcess(rt.context(), &agentapi.ProcessRequest{ContainerId: id})
	if err != nil {
		return // the pod went away; StopPod or watchVM record the end
	}
	rt.mu.Lock()
	out := rt.outputs[id]
	rt.mu.Unlock()
	if out != nil {
		out.wait(2 * time.Second)
	}
	m.recordExit(id, agentExit(res))
}

// stopContainer sends the stop signal, waits up to timeout, then kills every
// process of the container. Stopping a stopped or unknown container succeeds.
func (m *Manager) stopContainer(ctx context.Context, id string, timeout time.Duration) error {
	c, err := m.Container(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if c.State != StateRunning {
		return nil
	}
	rt, err := m.runtime(c.PodID)
	if err != nil {
		return nil // the pod's VM is gone, and the container with it
	}
	if timeout > 0 {
		_, _ = rt.agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: c.ID, Signal: uint32(stopSignal(m, c))})
		if m.waitExited(ctx, c.ID, timeout) {
			return nil
		}
	}
	if _, err := rt.agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: c.ID, Signal: uint32(unix.SIGKILL), All: true}); err != nil {
		return fmt.Errorf("agent kill: %w", err)
	}
	if !m.waitExited(ctx, c.ID, 10*time.Second) {
		return fmt.Errorf("container %s did not die after SIGKILL", c.ID)
	}
	return nil
}

// stopSignal is the image's STOPSIGNAL when it has one, else SIGTERM.
func stopSignal(m *Manager, c Container) unix.Signal {
	if img, err := m.opts.Images.Status(context.Background(), c.ImageID); err == nil && img.Config != nil {
		if s := unix.SignalNum(strings.ToUpper(img.Config.Config.StopSignal)); s != 0 {
			return s
		}
		if s := unix.SignalNum("SIG" + strings.ToUpper(img.Config.Config.StopSignal)); s != 0 {
			return s
		}
	}
	return unix.SIGTERM
}

// removeContainer removes a container (killing it first when running) with its
// root filesystem and binds. Removing an unknown container succeeds.
func (m *Manager) removeContainer(ctx context.Context, id string) error {
	c, err := m.Container(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if c.State == StateRunning {
		if err := m.stopContainer(ctx, c.ID, 0); err != nil {
			return err
		}
	}
	// One removal for every path (here, a pod's removal, a restart's
	// reclaim): it also finishes a removal a crash cut short.
	if err := m.reclaimContainer(ctx, c); err != nil {
		return err
	}
	m.events.publish(EventDeleted, c.ID, c.PodID)
	return nil
}

// isUnknownContainer tells a storage call on a container that storage no
// longer has (removed by an earlier, interrupted removal) from a real
// failure, by containers/storage's sentinels rather than their messages: for
// an unknown ID, Unmount answers ErrLayerUnknown (the ID is looked up as a
// layer once it is not a container's) and DeleteContainer ErrNotAContainer.
func isUnknownContainer(err error) bool {
	return errors.Is(err, storage.ErrContainerUnknown) || errors.Is(err, storage.ErrNotAContainer) || errors.Is(err, storage.ErrLayerUnknown)
}

// ExecResult is what ExecSync returns.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int32
}

// maxExecSyncOutput caps each output stream ExecSync returns, as containerd
// and CRI-O do since CVE-2022-31030 / CVE-2022-1708: a probe printing without
// end must not grow cocoond's heap.
const maxExecSyncOutput = 16 << 20

// ExecSync runs cmd in the container and collects its output, at most
// maxExecSyncOutput per stream; a timeout kills it.
func (m *Manager) ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration) (*ExecResult, error) {
	c, rt, base, err := m.execTarget(id)
	if err != nil {
		return nil, err
	}
	if len(cmd) == 0 {
		return nil, fmt.Errorf("%w: empty command", errdefs.ErrInvalidArgument)
	}
	wctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	execID := newID()[:16]
	proc, _ := json.Marshal(ocispec.ExecProcess(base, cmd, false))
	req := &agentapi.ExecProcessRequest{ContainerId: c.ID, ExecId: execID, Process: proc}
	if _, err := rt.agent.ExecProcess(wctx, req); err != nil {
		return nil, fmt.Errorf("agent ExecProcess: %w", err)
	}
	log := m.opts.Log.WithField("container", c.ID).WithField("exec", execID)
	stdout := newCappedBuffer(maxExecSyncOutput, func() { log.Warnf("exec stdout over %d bytes: the rest is discarded", maxExecSyncOutput) })
	stderr := newCappedBuffer(maxExecSyncOutput, func() { log.Warnf("exec stderr over %d bytes: the rest is discarded", maxExecSyncOutput) })
	code, err := m.streamProcess(wctx, rt, req, nil, stdout, stderr, nil)
	if err != nil {
		// The agent may report the deadline a hair before the local timer
		// fires: its DeadlineExceeded is translated here, deliberately.
		if timeout > 0 && ctx.Err() == nil && (wctx.Err() != nil || agentclient.GuestCode(err) == codes.DeadlineExceeded) {
			return nil, fmt.Errorf("exec in %s: %w after %v", c.ID, context.DeadlineExceeded, timeout)
		}
		return nil, err
	}
	return &ExecResult{Stdout: stdout.take(), Stderr: stderr.take(), ExitCode: code}, nil
}

// execTarget finds a running container, its pod runtime and its OCI spec.
func (m *Manager) execTarget(id string) (Container, *podRuntime, *specs.Spec, error) {
	c, err := m.Container(id)
	if err != nil {
		return c, nil, nil, err
	}
	if c.State != StateRunning {
		return c, nil, nil, fmt.Errorf("%w: container %s is not running", errdefs.ErrFailedPrecondition, c.ID)
	}
	rt, err := m.runtime(c.PodID)
	if err != nil {
		return c, nil, nil, err
	}
	// The spec comes from cocoond's own record, never from the share the
	// guest can write.
	if len(c.Spec) == 0 {
		return c, nil, nil, fmt.Errorf("%w: container %s has no recorded spec (created by an older cocoond): recreate it", errdefs.ErrFailedPrecondition, c.ID)
	}
	var s specs.Spec
	if err := json.Unmarshal(c.Spec, &s); err != nil {
		return c, nil, nil, err
	}
	return c, rt, &s, nil
}

// ReopenContainerLog makes the container's log writer reopen its file.
func (m *Manager) ReopenContainerLog(id string) error {
	c, _, o, err := m.runningOutput(id)
	if err != nil {
		return err
	}
	if o.path == "" {
		return fmt.Errorf("%w: container %s has no log", errdefs.ErrFailedPrecondition, c.ID)
	}
	return o.reopen()
}

// runningOutput finds a running container with its pod runtime and the output
// (log writer and attach fan-out) of its init process.
func (m *Manager) runningOutput(id string) (Container, *podRuntime, *output, error) {
	c, err := m.Container(id)
	if err != nil {
		return c, nil, nil, err
	}
	if c.State != StateRunning {
		return c, nil, nil, fmt.Errorf("%w: container %s is not running", errdefs.ErrFailedPrecondition, c.ID)
	}
	rt, err := m.runtime(c.PodID)
	if err != nil {
		return c, nil, nil, err
	}
	rt.mu.Lock()
	o := rt.outputs[c.ID]
	rt.mu.Unlock()
	if o == nil {
		return c, nil, nil, fmt.Errorf("%w: container %s has no output", errdefs.ErrFailedPrecondition, c.ID)
	}
	return c, rt, o, nil
}
