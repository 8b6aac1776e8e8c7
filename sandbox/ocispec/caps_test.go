package ocispec

import (
	"reflect"
	"slices"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ordered returns names in kernel order, as capabilities() lists them.
func ordered(names ...string) []string {
	out := []string{}
	for _, c := range allCapabilities {
		if slices.Contains(names, c) {
			out = append(out, c)
		}
	}
	return out
}

func without(list []string, drop ...string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(c string) bool { return slices.Contains(drop, c) })
}

func TestCapabilities(t *testing.T) {
	defaults := ordered(DefaultCapabilities...)
	for _, tc := range []struct {
		name        string
		c           *runtimeapi.Capability
		privileged  bool
		want        []string
		wantAmbient []string
		fail        bool
	}{
		{name: "defaults", want: defaults},
		{name: "add with and without prefix, any case", c: &runtimeapi.Capability{AddCapabilities: []string{"net_admin", "CAP_SYS_TIME", "Cap_Bpf"}},
			want: ordered(append(slices.Clone(DefaultCapabilities), "CAP_NET_ADMIN", "CAP_SYS_TIME", "CAP_BPF")...)},
		{name: "drop", c: &runtimeapi.Capability{DropCapabilities: []string{"NET_RAW", "cap_mknod"}}, want: without(defaults, "CAP_NET_RAW", "CAP_MKNOD")},
		{name: "add then drop same", c: &runtimeapi.Capability{AddCapabilities: []string{"SYS_ADMIN"}, DropCapabilities: []string{"SYS_ADMIN"}}, want: defaults},
		{name: "add ALL", c: &runtimeapi.Capability{AddCapabilities: []string{"ALL"}}, want: allCapabilities},
		{name: "add ALL drop one", c: &runtimeapi.Capability{AddCapabilities: []string{"all"}, DropCapabilities: []string{"CHOWN"}}, want: without(allCapabilities, "CAP_CHOWN")},
		{name: "drop ALL", c: &runtimeapi.Capability{DropCapabilities: []string{"ALL"}}, want: []string{}},
		{name: "drop ALL add one", c: &runtimeapi.Capability{DropCapabilities: []string{"ALL"}, AddCapabilities: []string{"NET_BIND_SERVICE"}}, want: []string{"CAP_NET_BIND_SERVICE"}},
		{name: "drop ALL beats add ALL", c: &runtimeapi.Capability{DropCapabilities: []string{"ALL"}, AddCapabilities: []string{"ALL"}}, want: []string{}},
		{name: "privileged", privileged: true, want: allCapabilities},
		{name: "privileged drop", privileged: true, c: &runtimeapi.Capability{DropCapabilities: []string{"SYS_ADMIN"}}, want: without(allCapabilities, "CAP_SYS_ADMIN")},
		{name: "ambient", c: &runtimeapi.Capability{DropCapabilities: []string{"ALL"}, AddAmbientCapabilities: []string{"NET_BIND_SERVICE"}},
			want: []string{"CAP_NET_BIND_SERVICE"}, wantAmbient: []string{"CAP_NET_BIND_SERVICE"}},
		{name: "ambient ALL", c: &runtimeapi.Capability{AddAmbientCapabilities: []string{"ALL"}}, fail: true},
		{name: "unknown add", c: &runtimeapi.Capability{AddCapabilities: []string{"CAP_FLY"}}, fail: true},
		{name: "unknown drop", c: &runtimeapi.Capability{DropCapabilities: []string{"FLY"}}, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := capabilities(tc.c, tc.privileged)
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Bounding, tc.want) || !reflect.DeepEqual(got.Effective, tc.want) || !reflect.DeepEqual(got.Permitted, tc.want) {
				t.Fatalf("caps %+v, want %v", got, tc.want)
			}
			wantAmbient := tc.wantAmbient
			if wantAmbient == nil {
				wantAmbient = []string{}
			}
			if !reflect.DeepEqual(got.Ambient, wantAmbient) || !reflect.DeepEqual(got.Inheritable, wantAmbient) {
				t.Fatalf("ambient %v inheritable %v, want %v", got.Ambient, got.Inheritable, wantAmbient)
			}
		})
	}
}

func TestCapabilityTable(t *testing.T) {
	if len(allCapabilities) != 41 || allCapabilities[21] != "CAP_SYS_ADMIN" || allCapabilities[40] != "CAP_CHECKPOINT_RESTORE" {
		t.Fatalf("capability table is off: %d entries", len(allCapabilities))
	}
	for _, c := range DefaultCapabilities {
		if _, ok := capIndex[c]; !ok {
			t.Fatalf("default %s not in the table", c)
		}
	}
}
