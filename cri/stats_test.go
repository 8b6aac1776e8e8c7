package cri

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox"
)

// statsPods is a pod manager whose silent pods' agents never answer stats:
// like the ttRPC client, a call on them returns when its context ends.
type statsPods struct {
	podManager
	pods   []sandbox.Pod
	ctrs   []sandbox.Container
	silent map[string]bool // pod ID → its agent never answers

	mu      sync.Mutex
	maxBusy int
	busy    int
}

func (f *statsPods) Pods() []sandbox.Pod             { return f.pods }
func (f *statsPods) Containers() []sandbox.Container { return f.ctrs }
func (f *statsPods) Pod(id string) (sandbox.Pod, error) {
	for _, p := range f.pods {
		if p.ID == id {
			return p, nil
		}
	}
	return sandbox.Pod{}, errdefs.ErrNotFound
}

// PodNetworkStats gives every pod the same counters.
func (f *statsPods) PodNetworkStats(id string) (*sandbox.NetworkStats, error) {
	if _, err := f.Pod(id); err != nil {
		return nil, err
	}
	return &sandbox.NetworkStats{Timestamp: time.Now(), Interface: "eth0", RxBytes: 1000, TxBytes: 2000, RxErrors: 1, TxErrors: 2}, nil
}

func (f *statsPods) ContainerStats(ctx context.Context, id string) (*sandbox.Stats, error) {
	f.mu.Lock()
	f.busy++
	f.maxBusy = max(f.maxBusy, f.busy)
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.busy--; f.mu.Unlock() }()
	for _, c := range f.ctrs {
		if c.ID != id {
			continue
		}
		if f.silent[c.PodID] {
			<-ctx.Done()
			return nil, fmt.Errorf("%w: stats of %s: %v", errdefs.ErrUnavailable, id, ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
		return &sandbox.Stats{Timestamp: time.Now(), MemoryWorkingSet: 7}, nil
	}
	return nil, errdefs.ErrNotFound
}

// newStatsServer has pods p0..p(n-1), each with two containers; the pods
// named in silent never answer.
func newStatsServer(n int, silent ...string) (*Server, *statsPods) {
	f := &statsPods{silent: map[string]bool{}}
	for i := range n {
		id := fmt.Sprintf("p%d", i)
		f.pods = append(f.pods, sandbox.Pod{ID: id, State: sandbox.StateReady})
		for j := range 2 {
			f.ctrs = append(f.ctrs, sandbox.Container{ID: fmt.Sprintf("%s-c%d", id, j), PodID: id, State: sandbox.StateRunning})
		}
	}
	for _, id := range silent {
		f.silent[id] = true
	}
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	return New(&fakeImages{}, fakeNetwork{}, f, nil, Options{}, logrus.NewEntry(log)), f
}

// inTime runs call and fails the test if it has not returned within d.
func inTime[T any](t *testing.T, d time.Duration, call func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() { v, err := call(); done <- result{v, err} }()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(d):
		t.Fatalf("no answer within %v", d)
		panic("unreachable")
	}
}

func TestListStatsSilentAgent(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		silent []string
		want   []string // pods answered
	}{
		{"every agent answers", nil, []string{"p0", "p1", "p2", "p3"}},
		{"one silent agent", []string{"p1"}, []string{"p0", "p2", "p3"}},
		{"every agent silent", []string{"p0", "p1", "p2", "p3"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStatsServer(4, tt.silent...)
			within := podStatsTimeout + 2*time.Second

			pods, err := inTime(t, within, func() (*runtimeapi.ListPodSandboxStatsResponse, error) {
				return s.ListPodSandboxStats(context.Background(), &runtimeapi.ListPodSandboxStatsRequest{})
			})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range pods.GetStats() {
				got = append(got, p.GetAttributes().GetId())
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("pods answered %v, want %v", got, tt.want)
			}

			ctrs, err := inTime(t, within, func() (*runtimeapi.ListContainerStatsResponse, error) {
				return s.ListContainerStats(context.Background(), &runtimeapi.ListContainerStatsRequest{})
			})
			if err != nil {
				t.Fatal(err)
			}
			podsOf := map[string]bool{}
			for _, c := range ctrs.GetStats() {
				podsOf[c.GetAttributes().GetId()[:2]] = true
			}
			got = got[:0]
			for id := range podsOf {
				got = append(got, id)
			}
			sort.Strings(got)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || len(ctrs.GetStats()) != 2*len(tt.want) {
				t.Errorf("containers answered of pods %v (%d stats), want %v", got, len(ctrs.GetStats()), tt.want)
			}
		})
	}
}

// TestListStatsBounded: pods are queried concurrently, but no more than
// statsParallel at once.
func TestListStatsBounded(t *testing.T) {
	s, f := newStatsServer(3 * statsParallel)
	start := time.Now()
	resp, err := s.ListPodSandboxStats(context.Background(), &runtimeapi.ListPodSandboxStatsRequest{})
	if err != nil || len(resp.GetStats()) != 3*statsParallel {
		t.Fatalf("ListPodSandboxStats: %d stats, %v", len(resp.GetStats()), err)
	}
	if f.maxBusy > statsParallel || f.maxBusy < 2 {
		t.Errorf("%d stats calls at once, want 2..%d", f.maxBusy, statsParallel)
	}
	// Sequentially, 48 calls of 10 ms take half a second.
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Errorf("took %v: pods not queried concurrently", d)
	}
}

// TestPodSandboxStatsSilentAgent: one pod's stats fail, in time, when its
// agent does not answer, rather than reading as zero usage.
func TestPodSandboxStatsSilentAgent(t *testing.T) {
	t.Parallel()
	s, _ := newStatsServer(2, "p1")
	if _, err := inTime(t, podStatsTimeout+time.Second, func() (*runtimeapi.PodSandboxStatsResponse, error) {
		return s.PodSandboxStats(context.Background(), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: "p1"})
	}); err == nil {
		t.Fatal("PodSandboxStats of a silent pod succeeded")
	}
	resp, err := s.PodSandboxStats(context.Background(), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: "p0"})
	if err != nil || resp.GetStats().GetLinux().GetMemory().GetWorkingSetBytes().GetValue() != 14 {
		t.Fatalf("PodSandboxStats of an answering pod: %v, %v", resp, err)
	}
	// kubelet's /stats/summary takes the pod's network from here.
	iface := resp.GetStats().GetLinux().GetNetwork().GetDefaultInterface()
	if iface.GetName() != "eth0" || iface.GetRxBytes().GetValue() != 1000 || iface.GetTxBytes().GetValue() != 2000 ||
		iface.GetRxErrors().GetValue() != 1 || iface.GetTxErrors().GetValue() != 2 {
		t.Fatalf("pod network: %v", resp.GetStats().GetLinux().GetNetwork())
	}
	if ifaces := resp.GetStats().GetLinux().GetNetwork().GetInterfaces(); len(ifaces) != 1 || ifaces[0].GetName() != "eth0" {
		t.Fatalf("pod interfaces: %v", ifaces)
	}
}
