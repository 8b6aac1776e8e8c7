package podcgroup

import (
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

const (
	testPod = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testUID = "5f0c2b1e_8d7a_4c3b_9a21_0e6f4d2c1b3a"
)

func TestForDerivesThePodCgroup(t *testing.T) {
	tests := []struct {
		name, driver, parent string
		wantPath             string
		wantErr              string // substring; "" means success
	}{
		{name: "cgroupfs burstable pod", driver: Cgroupfs, parent: "/kubepods/burstable/pod" + testUID,
			wantPath: "/kubepods/burstable/pod" + testUID + "/cocoon-" + testPod},
		{name: "cgroupfs guaranteed pod", driver: Cgroupfs, parent: "/kubepods/pod" + testUID,
			wantPath: "/kubepods/pod" + testUID + "/cocoon-" + testPod},
		{name: "cgroupfs without a parent", driver: Cgroupfs, parent: "",
			wantPath: "/cocoon/cocoon-" + testPod},
		{name: "systemd burstable pod", driver: Systemd, parent: "kubepods-burstable-pod" + testUID + ".slice",
			wantPath: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + testUID + ".slice/cocoon-" + testPod + ".scope"},
		{name: "systemd besteffort pod", driver: Systemd, parent: "kubepods-besteffort-pod" + testUID + ".slice",
			wantPath: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + testUID + ".slice/cocoon-" + testPod + ".scope"},
		{name: "systemd without a parent", driver: Systemd, parent: "",
			wantPath: "/cocoon.slice/cocoon-" + testPod + ".scope"},
		{name: "slice sent to cgroupfs", driver: Cgroupfs, parent: "kubepods-burstable-pod" + testUID + ".slice",
			wantErr: "set [daemon] cgroup_driver to kubelet's"},
		{name: "path sent to systemd", driver: Systemd, parent: "/kubepods/burstable/pod" + testUID,
			wantErr: "set [daemon] cgroup_driver to kubelet's"},
		{name: "relative cgroupfs parent", driver: Cgroupfs, parent: "kubepods/pod1", wantErr: "clean absolute"},
		{name: "cgroupfs parent climbing out", driver: Cgroupfs, parent: "/kubepods/../../etc", wantErr: "clean absolute"},
		{name: "bad slice", driver: Systemd, parent: "kubepods--x.slice", wantErr: "invalid slice name"},
		{name: "unknown driver", driver: "cgroupv3", parent: "/kubepods", wantErr: "cgroup driver"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ref, err := For(tc.driver, tc.parent, testPod)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("For = %+v, %v; want an invalid-argument error containing %q", ref, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := ref.Path()
			if err != nil || got != tc.wantPath {
				t.Fatalf("Path = %q, %v; want %q", got, err, tc.wantPath)
			}
			back, ok := refFromPath(got)
			if !ok || back != ref {
				t.Fatalf("refFromPath(%q) = %+v, %v; want %+v", got, back, ok, ref)
			}
		})
	}
}

func TestForRefusesPodIDsThatAreNotOneName(t *testing.T) {
	for _, id := range []string{"", "a/b", "../x", "a-b"} {
		if _, err := For(Cgroupfs, "/kubepods", id); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("For(pod id %q) = %v, want invalid argument", id, err)
		}
	}
}

func TestRefFromPathTakesOnlyCocoonPodCgroups(t *testing.T) {
	for _, rel := range []string{
		"/kubepods/burstable/pod1/cocoon-short",
		"/kubepods/burstable/pod1/cocoon-" + strings.ToUpper(testPod),
		"/kubepods/burstable/pod1/" + testPod,
		"/system.slice/cocoond.service",
		"/kubepods.slice/cri-containerd-" + testPod + ".scope",
		"/kubepods/pod1/cocoon-" + testPod + ".scope", // a scope outside any slice
	} {
		if ref, ok := refFromPath(rel); ok {
			t.Errorf("refFromPath(%q) = %+v, want no match", rel, ref)
		}
	}
}
