package agent

import (
	"errors"
	"os"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestHugetlbInHierarchy(t *testing.T) {
	controllers := func(s string, err error) func(string) ([]byte, error) {
		return func(path string) ([]byte, error) {
			if path != "/sys/fs/cgroup/cgroup.controllers" {
				t.Errorf("read %s", path)
			}
			return []byte(s), err
		}
	}
	noV1 := func() error { return errors.New("not mounted") }
	v1 := func() error { return nil }
	for _, tc := range []struct {
		name     string
		unified  bool
		read     func(string) ([]byte, error)
		v1Mount  func() error
		expected bool
	}{
		{"v2 with hugetlb", true, controllers("cpuset cpu io memory hugetlb pids\n", nil), noV1, true},
		{"v2 without hugetlb", true, controllers("cpuset cpu io memory pids\n", nil), v1, false},
		{"v2 unreadable", true, controllers("", os.ErrNotExist), v1, false},
		{"v1 mounted", false, controllers("", nil), v1, true},
		// This machine: hybrid, hugetlb only in the unified tree, which
		// libcontainer's v1 manager does not set limits in.
		{"hybrid without v1 hugetlb", false, controllers("hugetlb\n", nil), noV1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hugetlbInHierarchy(tc.unified, tc.read, tc.v1Mount); got != tc.expected {
				t.Fatalf("got %v, want %v", got, tc.expected)
			}
		})
	}
}

func TestDropUnenforceableHugepages(t *testing.T) {
	limits := func() *specs.LinuxResources {
		return &specs.LinuxResources{HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 0}, {Pagesize: "1GB", Limit: 0}}}
	}
	kept := limits()
	dropUnenforceableHugepages("c1", kept, true)
	if len(kept.HugepageLimits) != 2 {
		t.Fatalf("usable controller: limits %v, want both kept", kept.HugepageLimits)
	}
	dropped := limits()
	dropUnenforceableHugepages("c1", dropped, false)
	if dropped.HugepageLimits != nil {
		t.Fatalf("missing controller: limits %v, want none", dropped.HugepageLimits)
	}
	dropUnenforceableHugepages("c1", nil, false) // no resources at all
}
