package sandbox

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/vm"
)

// TestRecordExit: every way a container ends goes through recordExit, which
// keeps the code and reason kubelet has always seen for that way, records
// only the first exit, and publishes one stopped event per exit.
func TestRecordExit(t *testing.T) {
	t.Parallel()
	const at = int64(42)
	for _, tc := range []struct {
		name    string
		state   ContainerState
		started int64
		how     func(*Container) exit
		want    exit // zero with recorded false: the record is left alone
		changed bool
	}{
		{"exit 0", StateRunning, 1, agentExit(&agentapi.WaitProcessResponse{ExitCode: 0, ExitedAtNs: at}), exit{0, "Completed", "", at}, true},
		{"exit 3", StateRunning, 1, agentExit(&agentapi.WaitProcessResponse{ExitCode: 3, ExitedAtNs: at}), exit{3, "Error", "", at}, true},
		{"oom", StateRunning, 1, agentExit(&agentapi.WaitProcessResponse{ExitCode: 137, Reason: "OOMKilled", ExitedAtNs: at}), exit{137, "OOMKilled", "", at}, true},
		{"pod stopped, running", StateRunning, 1, podStoppedExit(at), exit{137, "PodStopped", "", at}, true},
		{"pod stopped, never started", StateCreated, 0, podStoppedExit(at), exit{0, "", "", at}, true},
		{"vm died, running", StateRunning, 1, vmDiedExit(at, "VM died: boom"), exit{255, "PodVMDied", "VM died: boom", at}, true},
		{"vm died, created", StateCreated, 0, vmDiedExit(at, "VM died: boom"), exit{255, "PodVMDied", "VM died: boom", at}, true},
		{"already exited", StateExited, 1, vmDiedExit(at, "late"), exit{}, false},
		{"still creating", StateCreating, 0, vmDiedExit(at, "VM died"), exit{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := testManager(t, &fakeNetwork{}, &fakeDriver{})
			events, cancel := m.Subscribe()
			defer cancel()
			id := pad("c")
			if err := m.containers.add(Container{ID: id, PodID: pad("p"), Name: "c", State: tc.state, StartedAt: tc.started}); err != nil {
				t.Fatal(err)
			}
			if got := m.recordExit(id, tc.how); got != tc.changed {
				t.Fatalf("recorded = %v, want %v", got, tc.changed)
			}
			c, _ := m.containers.get(id)
			got := exit{c.ExitCode, c.Reason, c.Message, c.FinishedAt}
			if got != tc.want || (tc.changed && c.State != StateExited) || (!tc.changed && c.State != tc.state) {
				t.Fatalf("record %s %+v, want %+v", c.State, got, tc.want)
			}
			select {
			case ev := <-events:
				if !tc.changed || ev.Kind != EventStopped || ev.ContainerID != id || ev.PodID != pad("p") {
					t.Fatalf("event %+v", ev)
				}
			default:
				if tc.changed {
					t.Fatal("no stopped event")
				}
			}
			// The second exit of anything is ignored.
			if m.recordExit(id, vmDiedExit(at+1, "again")) {
				t.Fatal("a second exit was recorded")
			}
		})
	}
}

// diesAtStartAgent is an agent whose VM dies while it starts a container.
type diesAtStartAgent struct {
	agentapi.AgentClient
	died func()
}

func (a *diesAtStartAgent) StartContainer(context.Context, *agentapi.ContainerRequest) (*emptypb.Empty, error) {
	a.died()
	return &emptypb.Empty{}, nil
}

// TestStartAfterVMDied: a VM dying while StartContainer waits on its agent
// records the container's exit; the start must not then write RUNNING over
// it (a container "running" in a dead pod, which nothing would ever end).
func TestStartAfterVMDied(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	podID, ctrID := pad("p"), pad("c")
	addPod(t, m, podID, "p", "ns", StateReady)
	if err := m.containers.add(Container{ID: ctrID, PodID: podID, Name: "c", State: StateCreated}); err != nil {
		t.Fatal(err)
	}
	agent := &diesAtStartAgent{died: func() { m.markDead(podID, "VM died: test") }}
	m.live[podID] = &podRuntime{agent: agent, outputs: map[string]*output{}}

	if err := m.StartContainer(context.Background(), ctrID); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("start after the VM died: %v, want FailedPrecondition", err)
	}
	c, _ := m.containers.get(ctrID)
	if c.State != StateExited || c.ExitCode != 255 || c.Reason != "PodVMDied" {
		t.Fatalf("container %s %d %s, want EXITED 255 PodVMDied", c.State, c.ExitCode, c.Reason)
	}
}

// signalledAgent runs one container whose process exits when it gets the
// stop signal, or never when deaf.
type signalledAgent struct {
	agentapi.AgentClient
	deaf   bool
	once   sync.Once
	exited chan struct{}
}

func (a *signalledAgent) StartContainer(context.Context, *agentapi.ContainerRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *signalledAgent) SignalProcess(_ context.Context, req *agentapi.SignalProcessRequest) (*emptypb.Empty, error) {
	if !a.deaf && req.Signal == uint32(unix.SIGTERM) {
		a.once.Do(func() { close(a.exited) })
	}
	return &emptypb.Empty{}, nil
}

func (a *signalledAgent) WaitProcess(ctx context.Context, _ *agentapi.ProcessRequest) (*agentapi.WaitProcessResponse, error) {
	select {
	case <-a.exited:
		return &agentapi.WaitProcessResponse{ExitCode: 143, ExitedAtNs: 7}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func runningContainer(t *testing.T, agent agentapi.AgentClient) (*Manager, string) {
	t.Helper()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	m.opts.Images = fakeImages{}
	podID, ctrID := pad("p"), pad("c")
	addPod(t, m, podID, "p", "ns", StateReady)
	if err := m.containers.add(Container{ID: ctrID, PodID: podID, Name: "c", State: StateCreated}); err != nil {
		t.Fatal(err)
	}
	v := &fakeVMM{spec: &vm.Spec{ID: podID, RunDir: t.TempDir()}, done: make(chan struct{})}
	rt := &podRuntime{vmm: v, agent: agent, outputs: map[string]*output{}}
	t.Cleanup(rt.end)
	m.live[podID] = rt
	if err := m.StartContainer(context.Background(), ctrID); err != nil {
		t.Fatal(err)
	}
	return m, ctrID
}

// TestStopContainerWakesOnExit: StopContainer with a long grace period
// returns as soon as the exit is recorded, woken by it.
func TestStopContainerWakesOnExit(t *testing.T) {
	t.Parallel()
	m, id := runningContainer(t, &signalledAgent{exited: make(chan struct{})})
	done := make(chan error, 1)
	go func() { done <- m.StopContainer(context.Background(), id, time.Hour) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("StopContainer still waiting after the container exited")
	}
	if c, _ := m.containers.get(id); c.State != StateExited || c.ExitCode != 143 || c.Reason != "Error" {
		t.Fatalf("container %s %d %s", c.State, c.ExitCode, c.Reason)
	}
}

// TestStopContainerHonoursContext: a container that ignores its signals
// holds StopContainer no longer than the caller's context.
func TestStopContainerHonoursContext(t *testing.T) {
	t.Parallel()
	m, id := runningContainer(t, &signalledAgent{deaf: true, exited: make(chan struct{})})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.StopContainer(ctx, id, time.Hour) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a container that never exited was reported stopped")
		}
	case <-time.After(waitTimeout):
		t.Fatal("StopContainer outlived its context")
	}
}
