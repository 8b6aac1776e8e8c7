package agent

import (
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
)

// kubelet sends a hugepage limit for every page size the node has, even
// for pods that ask for no hugepages. Where the hugetlb controller is not
// in the hierarchy libcontainer uses (a hybrid host whose v1 tree has no
// hugetlb, a guest kernel without it), libcontainer fails the whole
// container ("cannot set hugetlb limit"). There is then nothing to enforce
// the limit with, so it is dropped, as runc-based runtimes do on such nodes.
var hugetlbUsable = sync.OnceValue(func() bool {
	return hugetlbInHierarchy(cgroups.IsCgroup2UnifiedMode(), os.ReadFile, func() error {
		_, err := cgroups.FindCgroupMountpoint("", "hugetlb")
		return err
	})
})

// hugetlbInHierarchy decides for a v2 host from the root's controllers and
// for a v1 or hybrid one from whether hugetlb has a v1 mount.
func hugetlbInHierarchy(unified bool, readFile func(string) ([]byte, error), v1Mount func() error) bool {
	if unified {
		data, err := readFile("/sys/fs/cgroup/cgroup.controllers")
		return err == nil && slices.Contains(strings.Fields(string(data)), "hugetlb")
	}
	return v1Mount() == nil
}

// dropUnenforceableHugepages removes hugepage limits when usable says the
// hugetlb controller is missing, and says so once per container.
func dropUnenforceableHugepages(id string, r *specs.LinuxResources, usable bool) {
	if r == nil || len(r.HugepageLimits) == 0 || usable {
		return
	}
	logrus.WithFields(logrus.Fields{"container": id, "limits": len(r.HugepageLimits)}).Info("hugetlb controller missing: hugepage limits not enforced")
	r.HugepageLimits = nil
}
