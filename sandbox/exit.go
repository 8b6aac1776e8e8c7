package sandbox

import (
	"context"
	"errors"
	"time"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// exit is how a container ended, as ContainerStatus reports it.
type exit struct {
	code            int32
	reason, message string
	at              int64 // unix ns
}

// The ways a container ends. Each gives the code and reason kubelet has
// always seen for it.

// agentExit is the exit the agent saw: the process's own code, with the
// agent's reason (OOMKilled) or Completed/Error as containerd reports.
func agentExit(res *agentapi.WaitProcessResponse) func(*Container) exit {
	return func(*Container) exit {
		e := exit{code: res.GetExitCode(), reason: res.GetReason(), at: res.GetExitedAtNs()}
		switch {
		case e.reason != "":
		case e.code == 0:
			e.reason = "Completed"
		default:
			e.reason = "Error"
		}
		return e
	}
}

// podStoppedExit ends the containers StopPodSandbox found still alive: the
// agent killed them with the pod, so a started one reads as SIGKILLed
// (137, PodStopped); one never started ends with nothing to report.
func podStoppedExit(at int64) func(*Container) exit {
	return func(c *Container) exit {
		if c.StartedAt == 0 {
			return exit{at: at}
		}
		return exit{code: 137, reason: "PodStopped", at: at}
	}
}

// vmDiedExit ends the containers of a pod whose VM died (or was lost across
// a restart): nothing saw them exit, so the code is 255 and the message says
// what happened to the VM.
func vmDiedExit(at int64, why string) func(*Container) exit {
	return func(*Container) exit { return exit{code: 255, reason: "PodVMDied", message: why, at: at} }
}

// recordExit is the one way a container becomes EXITED. It records how it
// ended (code, reason, message, finish time), which wakes whoever waits for
// the exit (waitExited), and publishes the stopped event. The first exit
// recorded wins: a container already EXITED (its exit watcher and a pod stop
// racing), or still CREATING (its CreateContainer undoes it), is left alone,
// and the result is false.
func (m *Manager) recordExit(id string, how func(*Container) exit) bool {
	c, err := m.containers.update(id, func(c *Container) error {
		if !c.State.canBecome(StateExited) || c.State == StateExited {
			return errNoExit
		}
		e := how(c)
		c.State, c.ExitCode, c.Reason, c.Message, c.FinishedAt = StateExited, e.code, e.reason, e.message, e.at
		return nil
	})
	if err != nil {
		if !errors.Is(err, errNoExit) && !errors.Is(err, errdefs.ErrNotFound) {
			m.opts.Log.WithField("container", id).WithError(err).Warn("recording the container's exit failed")
		}
		return false
	}
	m.events.publish(EventStopped, c.ID, c.PodID)
	return true
}

// errNoExit tells recordExit's update there is nothing to record.
var errNoExit = errors.New("no exit to record")

// waitExited waits until the container has exited (or is gone), at most
// timeout; it is woken by the exit itself, and false means it did not come.
func (m *Manager) waitExited(ctx context.Context, id string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return m.containers.waitFor(ctx, id, func(c Container) bool { return c.State == StateExited }) == nil
}
