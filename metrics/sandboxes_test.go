package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// fakeStore is a hand-written Sandboxes.
type fakeStore struct {
	pods       []sandbox.Pod
	containers []sandbox.Container
}

func (f *fakeStore) Pods() []sandbox.Pod             { return f.pods }
func (f *fakeStore) Containers() []sandbox.Container { return f.containers }

func TestStateCollector(t *testing.T) {
	tests := []struct {
		name  string
		store fakeStore
		want  string
	}{
		{
			name: "empty store exports zeros",
			want: `
# HELP cocoon_containers Containers by state.
# TYPE cocoon_containers gauge
cocoon_containers{state="created"} 0
cocoon_containers{state="exited"} 0
cocoon_containers{state="running"} 0
cocoon_containers{state="unknown"} 0
# HELP cocoon_sandboxes Pod sandboxes by state.
# TYPE cocoon_sandboxes gauge
cocoon_sandboxes{state="notready"} 0
cocoon_sandboxes{state="ready"} 0
`,
		},
		{
			name: "counts by state",
			store: fakeStore{
				pods: []sandbox.Pod{{State: sandbox.StateReady}, {State: sandbox.StateReady}, {State: sandbox.StateNotReady}},
				containers: []sandbox.Container{
					{State: sandbox.StateCreated}, {State: sandbox.StateRunning}, {State: sandbox.StateRunning},
					{State: sandbox.StateRunning}, {State: sandbox.StateExited}, {State: "PAUSED"},
				},
			},
			want: `
# HELP cocoon_containers Containers by state.
# TYPE cocoon_containers gauge
cocoon_containers{state="created"} 1
cocoon_containers{state="exited"} 1
cocoon_containers{state="running"} 3
cocoon_containers{state="unknown"} 1
# HELP cocoon_sandboxes Pod sandboxes by state.
# TYPE cocoon_sandboxes gauge
cocoon_sandboxes{state="notready"} 1
cocoon_sandboxes{state="ready"} 2
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &stateCollector{store: &tt.store}
			if err := testutil.CollectAndCompare(c, strings.NewReader(tt.want)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestStateCollectorFollowsTheStore checks the gauges are recomputed per
// scrape rather than accumulated.
func TestStateCollectorFollowsTheStore(t *testing.T) {
	store := &fakeStore{pods: []sandbox.Pod{{State: sandbox.StateReady}}}
	c := &stateCollector{store: store}
	const head = "# HELP cocoon_sandboxes Pod sandboxes by state.\n# TYPE cocoon_sandboxes gauge\n"
	for _, step := range []struct {
		state sandbox.PodState
		want  string
	}{
		{sandbox.StateReady, `cocoon_sandboxes{state="notready"} 0` + "\n" + `cocoon_sandboxes{state="ready"} 1`},
		{sandbox.StateNotReady, `cocoon_sandboxes{state="notready"} 1` + "\n" + `cocoon_sandboxes{state="ready"} 0`},
	} {
		store.pods[0].State = step.state
		if err := testutil.CollectAndCompare(c, strings.NewReader(head+step.want+"\n"), "cocoon_sandboxes"); err != nil {
			t.Fatalf("pod %s: %v", step.state, err)
		}
	}
}
