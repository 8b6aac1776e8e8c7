package sandbox

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	storage "go.podman.io/storage"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/image"
)

// hostilePod stores a ready pod with one running container, served by a
// hostile agent over real ttRPC, and returns the container's ID.
func hostilePod(t *testing.T, m *Manager, prefix string, h *agenttest.Hostile) (string, *podRuntime) {
	t.Helper()
	podID, ctrID := pad(prefix+"p"), pad(prefix+"c")
	addPod(t, m, podID, "pod-"+prefix, "default", StateReady)
	spec := []byte(`{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0}}}`)
	if err := m.containers.add(Container{ID: ctrID, PodID: podID, Name: "c-" + prefix, State: StateRunning, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	rt := &podRuntime{agent: agenttest.ServeAgent(t, h), outputs: map[string]*output{}}
	m.mu.Lock()
	m.live[podID] = rt
	m.mu.Unlock()
	return ctrID, rt
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func TestExecSyncHostileOutput(t *testing.T) {
	for _, tt := range []struct {
		name       string
		agent      func() *agenttest.Hostile
		timeout    time.Duration
		within     time.Duration
		wantErr    error
		wantStdout int
	}{
		// 120 MiB per stream, the process exits at once: 16 MiB kept of each,
		// the rest read and discarded (the agent sent all of it).
		{"huge output", func() *agenttest.Hostile { return &agenttest.Hostile{Output: agenttest.OutputFinite, Bytes: 120 << 20} }, 0, 20 * time.Second, nil, maxExecSyncOutput},
		// A probe running `sh -c 'sleep 1d &'`: exited, but stdout stays open.
		{"stdout held open after exit", func() *agenttest.Hostile { return &agenttest.Hostile{Output: agenttest.OutputHeldOpen, Bytes: 5} }, 0, execDrainTimeout + 2*time.Second, nil, 5},
		// Output without end from a process that exits after a second.
		{"endless output, exits", func() *agenttest.Hostile {
			return &agenttest.Hostile{Output: agenttest.OutputEndless, Exit: time.Second}
		}, 0, time.Second + execDrainTimeout + 5*time.Second, nil, maxExecSyncOutput},
		// Output without end from a process that never exits: the timeout kills it.
		{"endless output, never exits", func() *agenttest.Hostile { return &agenttest.Hostile{Output: agenttest.OutputEndless, Exit: -1} }, 2 * time.Second, 2*time.Second + agentCallTimeout, context.DeadlineExceeded, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := testManager(t, &fakeNetwork{}, &fakeDriver{})
			h := tt.agent()
			id, _ := hostilePod(t, m, "e", h)
			before := liveHeap()
			start := time.Now()
			var res *ExecResult
			var err error
			done := make(chan struct{})
			go func() {
				defer close(done)
				res, err = m.ExecSync(context.Background(), id, []string{"probe"}, tt.timeout)
			}()
			select {
			case <-done:
			case <-time.After(tt.within):
				t.Fatalf("ExecSync did not return within %v", tt.within)
			}
			took := time.Since(start)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ExecSync error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			grown := int64(liveHeap()) - int64(before)
			if len(res.Stdout) != tt.wantStdout || len(res.Stderr) != tt.wantStdout {
				t.Errorf("kept %d bytes of stdout and %d of stderr, want %d each", len(res.Stdout), len(res.Stderr), tt.wantStdout)
			}
			if grown > 64<<20 {
				t.Errorf("heap grew by %d MiB after %d MiB streamed, want under 64 MiB", grown>>20, h.Sent.Load()>>20)
			}
			t.Logf("streamed %d MiB in %v; heap grew by %d MiB", h.Sent.Load()>>20, took, grown>>20)
			runtime.KeepAlive(res)
		})
	}
}

// streamCtxs records the contexts the output streams are read on.
type streamCtxs struct {
	agentapi.AgentClient
	mu   sync.Mutex
	ctxs []context.Context
}

func (a *streamCtxs) ReadOutput(ctx context.Context, req *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	a.mu.Lock()
	a.ctxs = append(a.ctxs, ctx)
	a.mu.Unlock()
	return a.AgentClient.ReadOutput(ctx, req)
}

// TestExecSyncStreamsEndWithIt: no output stream outlives ExecSync, whatever
// the agent does with it after the process exited.
func TestExecSyncStreamsEndWithIt(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	id, rt := hostilePod(t, m, "s", &agenttest.Hostile{Output: agenttest.OutputHeldOpen, Bytes: 1})
	rec := &streamCtxs{AgentClient: rt.agent}
	rt.agent = rec
	if _, err := m.ExecSync(context.Background(), id, []string{"probe"}, 0); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.ctxs) != 2 {
		t.Fatalf("%d output streams read, want 2", len(rec.ctxs))
	}
	for _, ctx := range rec.ctxs {
		if ctx.Err() == nil {
			t.Fatal("an output stream is still read after ExecSync returned")
		}
	}
}

func TestCappedBuffer(t *testing.T) {
	t.Parallel()
	drops := 0
	b := newCappedBuffer(10, func() { drops++ })
	for _, w := range []string{"hello", "world!", "more"} {
		if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
			t.Fatalf("Write(%q) = %d, %v: a capped buffer must take everything", w, n, err)
		}
	}
	if got := string(b.take()); got != "helloworld" || drops != 1 || b.dropped != 5 || cap(b.buf) > 10 {
		t.Fatalf("kept %q (cap %d), %d drop warnings, %d dropped", got, cap(b.buf), drops, b.dropped)
	}
	_, _ = b.Write([]byte("late"))
	if got := string(b.take()); got != "helloworld" {
		t.Fatalf("a write after take changed the result: %q", got)
	}
}

// fakeImages answers the image calls stats and container removal make: no
// image, no layer size, and storage calls that succeed.
type fakeImages struct{}

func (fakeImages) Status(context.Context, string) (*image.Image, error) {
	return nil, errdefs.ErrNotFound
}
func (fakeImages) Store() storage.Store { return fakeStore{} }

type fakeStore struct{ storage.Store }

func (fakeStore) ContainerSize(string) (int64, error) { return 0, nil }
func (fakeStore) Unmount(string, bool) (bool, error)  { return false, nil }
func (fakeStore) DeleteContainer(string) error        { return nil }
func (fakeStore) Container(id string) (*storage.Container, error) {
	return &storage.Container{ID: id}, nil
}

// TestStatsSilentAgent: one agent that never answers stats costs its caller
// at most the caller's deadline, and the other pods' stats are answered
// meanwhile.
func TestStatsSilentAgent(t *testing.T) {
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	m.opts.Images = fakeImages{}
	silent, _ := hostilePod(t, m, "a", &agenttest.Hostile{SilentStats: true})
	fine, _ := hostilePod(t, m, "b", &agenttest.Hostile{Stats: &agentapi.ContainerStats{MemoryUsageBytes: 100, MemoryWorkingSetBytes: 50, TimestampNs: time.Now().UnixNano()}})

	slow := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := m.ContainerStats(ctx, silent)
		slow <- err
	}()
	st, err := m.ContainerStats(context.Background(), fine)
	if err != nil || st.MemoryWorkingSet != 50 {
		t.Fatalf("the answering pod's stats: %+v, %v", st, err)
	}
	// The answer came while the silent pod's call was still waiting: one
	// silent agent holds up nobody else.
	select {
	case err := <-slow:
		t.Fatalf("the silent pod's call ended (%v) before the other pod was answered", err)
	default:
	}
	select {
	case err := <-slow:
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("silent agent's stats error %v, want ErrUnavailable", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("ContainerStats outlived its caller's deadline on a silent agent")
	}
}

// TestShortCallDeadline: an agent call made on a deadline-free context gets
// agentCallTimeout, and the pod's end cancels it.
func TestShortCallDeadline(t *testing.T) {
	t.Parallel()
	rt := &podRuntime{}
	ctx, cancel := rt.shortCall(context.Background())
	defer cancel()
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) > agentCallTimeout {
		t.Fatalf("short call deadline %v (set %v), want within %v", dl, ok, agentCallTimeout)
	}
	long := rt.context()
	rt.end()
	for _, c := range []context.Context{ctx, long} {
		select {
		case <-c.Done():
		case <-time.After(time.Second):
			t.Fatal("the pod's end did not cancel its calls")
		}
	}
}

func TestCheckStats(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		s    *agentapi.ContainerStats
		ok   bool
	}{
		{"plausible", &agentapi.ContainerStats{MemoryUsageBytes: 1 << 30, MemoryWorkingSetBytes: 1 << 29, PidsCurrent: 10, MemoryLimitBytes: ^uint64(0)}, true},
		{"exabyte of memory", &agentapi.ContainerStats{MemoryUsageBytes: 1 << 60, MemoryWorkingSetBytes: 1}, false},
		{"working set over usage", &agentapi.ContainerStats{MemoryUsageBytes: 10, MemoryWorkingSetBytes: 20}, false},
		{"too many processes", &agentapi.ContainerStats{PidsCurrent: 1 << 40}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkStats(tt.s); (err == nil) != tt.ok {
				t.Fatalf("checkStats = %v, want ok %v", err, tt.ok)
			}
		})
	}
}
