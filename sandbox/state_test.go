package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

func TestPodTransitions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		from, to PodState
		ok       bool
	}{
		{StateCreating, StateReady, true},
		{StateCreating, StateNotReady, true}, // a run whose undo failed
		{StateReady, StateNotReady, true},
		{StateReady, StateReady, true},
		{StateNotReady, StateNotReady, true}, // a stop retried
		{StateNotReady, StateReady, false},   // a stopped pod never comes back
		{StateReady, StateCreating, false},
		{StateNotReady, StateCreating, false},
		{StateReady, "PAUSED", false},
	} {
		if got := tc.from.canBecome(tc.to); got != tc.ok {
			t.Errorf("pod %s → %s allowed = %v, want %v", tc.from, tc.to, got, tc.ok)
		}
	}
}

func TestContainerTransitions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		from, to ContainerState
		ok       bool
	}{
		{StateCreating, StateCreated, true},
		{StateCreating, StateCreating, true}, // progress saved during creation
		{StateCreated, StateRunning, true},
		{StateCreated, StateExited, true}, // its pod stopped or its VM died
		{StateRunning, StateExited, true},
		{StateCreating, StateRunning, false},
		{StateCreating, StateExited, false}, // only its own CreateContainer undoes it
		{StateRunning, StateCreated, false},
		{StateExited, StateRunning, false}, // a start that lands after the VM died
		{StateExited, StateCreated, false},
		{StateExited, StateExited, true},
	} {
		if got := tc.from.canBecome(tc.to); got != tc.ok {
			t.Errorf("container %s → %s allowed = %v, want %v", tc.from, tc.to, got, tc.ok)
		}
	}
}

// TestStoreRefusesTransitions: the store applies the table to every
// update, so no path can write a refused state.
func TestStoreRefusesTransitions(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	addPod(t, m, pad("p1"), "p", "ns", StateNotReady)
	if _, err := m.pods.update(pad("p1"), func(p *Pod) error { p.State = StateReady; return nil }); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("NOTREADY → READY: %v, want FailedPrecondition", err)
	}
	if err := m.containers.add(Container{ID: pad("c1"), PodID: pad("p1"), Name: "c", State: StateExited}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.containers.update(pad("c1"), func(c *Container) error { c.State = StateRunning; return nil }); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("EXITED → RUNNING: %v, want FailedPrecondition", err)
	}
	if c, _ := m.containers.get(pad("c1")); c.State != StateExited {
		t.Fatalf("refused update changed the record: %s", c.State)
	}
}

// TestStatesPersistAsBefore: typed states write the strings records always
// had, so records of an older cocoond load.
func TestStatesPersistAsBefore(t *testing.T) {
	t.Parallel()
	data, err := json.Marshal(Container{State: StateRunning})
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	_ = json.Unmarshal(data, &raw)
	if raw["state"] != "RUNNING" {
		t.Fatalf("state persisted as %v", raw["state"])
	}
	var p Pod
	if err := json.Unmarshal([]byte(`{"id":"x","state":"NOTREADY"}`), &p); err != nil || p.State != StateNotReady {
		t.Fatalf("old record: %+v %v", p, err)
	}
}

func TestStoreWatch(t *testing.T) {
	t.Parallel()
	s := newStore(t.TempDir(), storeHooks[testRec]{})
	if err := s.add(testRec{ID: "a", State: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.watch("missing"); ok {
		t.Fatal("watch of a missing record")
	}
	_, changed, _ := s.watch("a")
	_, again, _ := s.watch("a")
	if changed != again {
		t.Fatal("two watchers of one record got two channels")
	}
	select {
	case <-changed:
		t.Fatal("closed before any change")
	default:
	}
	if _, err := s.update("a", func(r *testRec) error { return errors.New("refused") }); err == nil {
		t.Fatal("refused update applied")
	}
	select {
	case <-changed:
		t.Fatal("a refused update woke the watcher")
	default:
	}
	if _, err := s.update("a", func(r *testRec) error { r.State = "y"; return nil }); err != nil {
		t.Fatal(err)
	}
	<-changed // closed by the update: a receive that would block forever otherwise
	rec, next, _ := s.watch("a")
	if rec.State != "y" || next == changed {
		t.Fatalf("after the update: %+v, same channel %v", rec, next == changed)
	}
	if err := s.remove("a"); err != nil {
		t.Fatal(err)
	}
	<-next // removal wakes too
}

func TestStoreWaitFor(t *testing.T) {
	t.Parallel()
	s := newStore(t.TempDir(), storeHooks[testRec]{})
	if err := s.add(testRec{ID: "a", State: "RUNNING"}); err != nil {
		t.Fatal(err)
	}
	exited := func(r testRec) bool { return r.State == "EXITED" }

	// The waiter has no timer of its own: only the change, or its context,
	// can end the wait.
	done := make(chan error, 1)
	go func() { done <- s.waitFor(context.Background(), "a", exited) }()
	// Updates that do not satisfy it wake it without ending the wait.
	for i := range 3 {
		if _, err := s.update("a", func(r *testRec) error { r.State = fmt.Sprint("RUNNING", i); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("wait ended before the exit: %v", err)
	default:
	}
	if _, err := s.update("a", func(r *testRec) error { r.State = "EXITED"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiter: %v", err)
	}

	if err := s.add(testRec{ID: "b", State: "RUNNING"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- s.waitFor(ctx, "b", exited) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	if err := s.waitFor(context.Background(), "gone", exited); err != nil {
		t.Fatalf("a missing record has nothing to wait for: %v", err)
	}
}

// TestReadsDoNotDecode: a record's CRI config is decoded once, when the
// store loads or adds it; reads, kubelet's polls among them, never decode,
// and an update decodes only when it changed the config.
func TestReadsDoNotDecode(t *testing.T) {
	// Not parallel: it counts decodes made by the whole package.
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	cfg, _ := marshalConfig(&runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}, Labels: map[string]string{"app": "x"}})
	for i := range 3 {
		addPod(t, m, pad(fmt.Sprint("p", i)), fmt.Sprint("p", i), "ns", StateReady)
		if err := m.containers.add(Container{ID: pad(fmt.Sprint("c", i)), PodID: pad(fmt.Sprint("p", i)), Name: fmt.Sprint("c", i), Config: cfg, State: StateCreated}); err != nil {
			t.Fatal(err)
		}
	}
	// A restart loads them: one decode each.
	before := configDecodes.Load()
	m2, err := New(m.opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := configDecodes.Load() - before; n != 6 {
		t.Fatalf("loading 6 records decoded %d times", n)
	}

	before = configDecodes.Load()
	for range 100 {
		for _, p := range m2.Pods() {
			if p.PodConfig().GetMetadata().GetNamespace() != "ns" {
				t.Fatal("pod config lost")
			}
		}
		for _, c := range m2.Containers() {
			if c.ContainerConfig().GetLabels()["app"] != "x" {
				t.Fatal("container config lost")
			}
		}
		p, _ := m2.Pod(pad("p1"))
		c, _ := m2.Container(pad("c1")[:8])
		_, _ = p.PodConfig(), c.ContainerConfig()
	}
	if _, err := m2.containers.update(pad("c1"), func(c *Container) error { c.State = StateRunning; return nil }); err != nil {
		t.Fatal(err)
	}
	if n := configDecodes.Load() - before; n != 0 {
		t.Fatalf("reads and a state change decoded %d times", n)
	}
	if _, err := m2.containers.update(pad("c1"), func(c *Container) error {
		c.Config, _ = marshalConfig(&runtimeapi.ContainerConfig{Labels: map[string]string{"app": "y"}})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if c, _ := m2.Container(pad("c1")); c.ContainerConfig().GetLabels()["app"] != "y" || configDecodes.Load()-before != 1 {
		t.Fatalf("a changed config: labels %v after %d decodes", c.ContainerConfig().GetLabels(), configDecodes.Load()-before)
	}
}

// TestConfigFromANewerCocoond: a persisted config with a field this
// cocoond does not know keeps what it does know.
func TestConfigFromANewerCocoond(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rec := `{"version":1,"data":{"id":"` + pad("p") + `","name":"n","state":"READY","config":{"metadata":{"name":"web","namespace":"ns"},"fieldOfTomorrow":1}}}`
	if err := os.WriteFile(filepath.Join(dir, pad("p")+".json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStore(dir, storeHooks[Pod]{prepare: decodePod, check: checkPod})
	if err := s.load(testLog()); err != nil {
		t.Fatal(err)
	}
	p, ok := s.get(pad("p"))
	if !ok || p.PodConfig().GetMetadata().GetName() != "web" {
		t.Fatalf("pod %+v (%v), metadata %v", p, ok, p.PodConfig().GetMetadata())
	}
}

// waitTimeout is how long a test waits for something that must happen; it
// only bounds a failure.
const waitTimeout = 10 * time.Second
