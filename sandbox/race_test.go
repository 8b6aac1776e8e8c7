package sandbox

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

// slowStartAgent is an agent whose StartContainer takes a while, so a
// StopPodSandbox or RemovePodSandbox sent meanwhile would interleave with it
// were the pod's operations not serialised. DestroySandbox powers the VM off.
type slowStartAgent struct {
	agentapi.AgentClient
	vmm     *fakeVMM
	entered chan struct{}
}

func (a *slowStartAgent) StartContainer(context.Context, *agentapi.ContainerRequest) (*emptypb.Empty, error) {
	close(a.entered)
	time.Sleep(50 * time.Millisecond)
	return &emptypb.Empty{}, nil
}

func (a *slowStartAgent) DestroySandbox(context.Context, *agentapi.DestroySandboxRequest) (*emptypb.Empty, error) {
	_ = a.vmm.Stop(context.Background())
	return &emptypb.Empty{}, nil
}

func (a *slowStartAgent) WaitProcess(ctx context.Context, _ *agentapi.ProcessRequest) (*agentapi.WaitProcessResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (a *slowStartAgent) SignalProcess(context.Context, *agentapi.SignalProcessRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *slowStartAgent) RemoveContainer(context.Context, *agentapi.RemoveContainerRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// TestPodOperationsAreSerialised races StartContainer against
// StopPodSandbox and RemovePodSandbox on one pod: whichever wins, the end is
// consistent (no container runs in a stopped pod, nothing of a removed pod
// is left), and a pod next door is never held up.
func TestPodOperationsAreSerialised(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		race func(m *Manager, podID string) error
	}{
		{"stop pod", func(m *Manager, podID string) error { return m.StopPod(context.Background(), podID) }},
		{"remove pod", func(m *Manager, podID string) error { return m.RemovePod(context.Background(), podID) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testManager(t, &fakeNetwork{}, &fakeDriver{})
			m.opts.Images = fakeImages{}
			podID, ctrID := pad("a1"), pad("c1")
			addPod(t, m, podID, "pod", "default", StateReady)
			if err := m.containers.add(Container{ID: ctrID, PodID: podID, Name: "c", State: StateCreated}); err != nil {
				t.Fatal(err)
			}
			v := &fakeVMM{spec: &vm.Spec{ID: podID, RunDir: t.TempDir()}, done: make(chan struct{})}
			agent := &slowStartAgent{vmm: v, entered: make(chan struct{})}
			rt := &podRuntime{vmm: v, agent: agent, outputs: map[string]*output{}}
			m.mu.Lock()
			m.live[podID] = rt
			m.mu.Unlock()

			var wg sync.WaitGroup
			var startErr, raceErr error
			wg.Add(2)
			go func() { defer wg.Done(); startErr = m.StartContainer(context.Background(), ctrID) }()
			<-agent.entered
			go func() { defer wg.Done(); raceErr = tc.race(m, podID) }()
			// Another pod's lock is free while this one is busy.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			if unlock, err := m.locks.lock(ctx, pad("b1")); err != nil {
				t.Errorf("another pod's lock: %v", err)
			} else {
				unlock()
			}
			cancel()
			wg.Wait()
			if startErr != nil || raceErr != nil {
				t.Fatalf("start: %v; %s: %v", startErr, tc.name, raceErr)
			}
			c, ok := m.containers.get(ctrID)
			p, podOK := m.pods.get(podID)
			switch tc.name {
			case "stop pod":
				if !ok || c.State != StateExited || !podOK || p.State != StateNotReady {
					t.Fatalf("after start and stop: container %+v (%v), pod %s", c, ok, p.State)
				}
			case "remove pod":
				if ok || podOK {
					t.Fatalf("after start and remove: container left %v, pod left %v", ok, podOK)
				}
			}
			if n := m.locks.size(); n != 0 {
				t.Fatalf("%d pod locks left", n)
			}
		})
	}
}
