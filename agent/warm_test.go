package agent

import (
	"errors"
	"reflect"
	"testing"

	"github.com/opencontainers/cgroups"
)

// recordingManager is a cgroups.Manager that records the calls the warm-up
// makes and fails the ones it is told to.
type recordingManager struct {
	cgroups.Manager // calls the warm-up must not make panic on the nil interface
	calls           []string
	fail            map[string]error
}

func (m *recordingManager) Apply(pid int) error {
	if pid != -1 {
		m.calls = append(m.calls, "Apply(pid)")
	} else {
		m.calls = append(m.calls, "Apply")
	}
	return m.fail["Apply"]
}

func (m *recordingManager) Set(r *cgroups.Resources) error {
	if len(r.Devices) == 0 || r.Devices[0].Allow {
		m.calls = append(m.calls, "Set(no deny-all device rule)")
	} else {
		m.calls = append(m.calls, "Set")
	}
	return m.fail["Set"]
}

func (m *recordingManager) Destroy() error {
	m.calls = append(m.calls, "Destroy")
	return m.fail["Destroy"]
}

// TestWarmCgroupsAlwaysRemovesItsCgroup: the warm-up sets up a container-like
// cgroup (no process in it, the containers' device rules) under the
// containers' parent and removes it, also when a step fails.
func TestWarmCgroupsAlwaysRemovesItsCgroup(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name      string
		fail      map[string]error
		wantCalls []string
		wantErr   error
	}{
		{name: "all steps work", wantCalls: []string{"Apply", "Set", "Destroy"}},
		{name: "apply fails", fail: map[string]error{"Apply": boom}, wantCalls: []string{"Apply", "Destroy"}, wantErr: boom},
		{name: "set fails", fail: map[string]error{"Set": boom}, wantCalls: []string{"Apply", "Set", "Destroy"}, wantErr: boom},
		{name: "removal fails", fail: map[string]error{"Destroy": boom}, wantCalls: []string{"Apply", "Set", "Destroy"}, wantErr: boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &recordingManager{fail: tc.fail}
			var gotPath string
			saved := newCgroupManager
			newCgroupManager = func(cg *cgroups.Cgroup) (cgroups.Manager, error) {
				gotPath = cg.Path
				return m, nil
			}
			t.Cleanup(func() { newCgroupManager = saved })

			err := warmCgroups(containerCgroupParent + "/" + warmCgroupName)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(m.calls, tc.wantCalls) {
				t.Errorf("calls = %v, want %v", m.calls, tc.wantCalls)
			}
			if gotPath != "/cocoon/.warmup" {
				t.Errorf("cgroup path = %q, want /cocoon/.warmup", gotPath)
			}
		})
	}
}
