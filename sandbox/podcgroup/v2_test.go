package podcgroup

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs2"
	"github.com/opencontainers/cgroups/manager"
)

// v2Limit is a limit the test sets on a container cgroup through the
// library's cgroup v2 code, in a controller the v2 hierarchy has.
type v2Limit struct {
	controller string
	resources  *cgroups.Resources
	file, want string // the interface file the limit lands in, and its value
}

// v2Hierarchy finds this host's cgroup v2 hierarchy (the whole tree on a
// pure v2 host, /sys/fs/cgroup/unified on a hybrid one) and a domain
// controller it can give to children, or skips with the reason.
func v2Hierarchy(t *testing.T) (string, v2Limit) {
	t.Helper()
	var root string
	switch {
	case cgroups.IsCgroup2UnifiedMode():
		root = "/sys/fs/cgroup"
	case cgroups.IsCgroup2HybridMode():
		root = "/sys/fs/cgroup/unified"
	default:
		t.Skip("skipping: this host has no cgroup v2 hierarchy")
	}
	data, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		t.Fatal(err)
	}
	avail := strings.Fields(string(data))
	// A multiple of every huge page size (2 MiB, 1 GiB): the kernel keeps it.
	const limit = 8 << 30
	switch {
	case slices.Contains(avail, "memory"):
		return root, v2Limit{"memory", &cgroups.Resources{Memory: limit}, "memory.max", strconv.Itoa(limit)}
	case slices.Contains(avail, "hugetlb") && len(cgroups.HugePageSizes()) > 0:
		size := cgroups.HugePageSizes()[0]
		return root, v2Limit{"hugetlb", &cgroups.Resources{HugetlbLimit: []*cgroups.HugepageLimit{{Pagesize: size, Limit: limit}}},
			"hugetlb." + size + ".max", strconv.Itoa(limit)}
	}
	t.Skipf("skipping: the cgroup v2 hierarchy at %s has no memory or hugetlb controller to delegate (has %v)", root, avail)
	return "", v2Limit{}
}

// enableController adds controller to dir's cgroup.subtree_control; undo
// takes it back if it was not there.
func enableController(t *testing.T, dir, controller string) (undo func()) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(strings.Fields(string(data)), controller) {
		return func() {}
	}
	if err := cgroups.WriteFile(dir, "cgroup.subtree_control", "+"+controller); err != nil {
		t.Fatalf("enabling %s below %s: %v", controller, dir, err)
	}
	return func() {
		if err := cgroups.WriteFile(dir, "cgroup.subtree_control", "-"+controller); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Logf("giving back %s below %s: %v", controller, dir, err)
		}
	}
}

// startSleeper starts a process that lives until killed, reaped as soon as
// it dies so no zombie stays listed anywhere.
func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd
}

// TestHostPodContainerGetsControllersOnCgroupV2 reproduces issue 14 on this
// host's real cgroup v2 hierarchy: a host pod's agent is joined to its pod
// cgroup, a container cgroup is made below the pod cgroup as the agent's
// libcontainer does it on a pure v2 host (fs2.CreateCgroupPath enables the
// controllers in each ancestor's cgroup.subtree_control, ignoring
// failures), and the container's limit is set through fs2. The kernel
// refuses controllers below a cgroup holding a process, so with the agent
// in the pod cgroup itself the limit file is missing and Set fails. Killing
// and removing the pod cgroup must then take the agent and the container.
// On a hybrid host the v2 hierarchy has only the controllers no v1
// hierarchy took (hugetlb here), which is enough to show the rule.
func TestHostPodContainerGetsControllersOnCgroupV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to make cgroups on the host")
	}
	v2, lim := v2Hierarchy(t)
	m, err := New(Cgroupfs)
	if err != nil {
		t.Fatal(err)
	}
	top := fmt.Sprintf("/cocoon-v2test-%d", os.Getpid())
	ref, err := m.For(top, strings.Repeat("f", 64))
	if err != nil {
		t.Fatal(err)
	}
	podPath, _ := ref.Path()
	ctrPath := filepath.Join(podPath, strings.Repeat("c", 64))
	// Cleanups run last-registered first: processes, the tree, the root.
	t.Cleanup(enableController(t, v2, lim.controller))
	t.Cleanup(func() { removeTree(t, top) })
	if err := m.Create(ref); err != nil {
		t.Fatal(err)
	}
	// kubelet's pod cgroup (top here) gives its children the controllers.
	enableController(t, filepath.Join(v2, top), lim.controller)

	agent := startSleeper(t)
	if err := m.Join(context.Background(), ref, agent.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// The container's cgroup, made and joined as the agent's libcontainer
	// does on this host (fs on hybrid, fs2 on pure v2)...
	ctr := startSleeper(t)
	cm, err := manager.New(&cgroups.Cgroup{Path: ctrPath, Resources: &cgroups.Resources{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cm.Apply(ctr.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// ...with fs2's subtree_control write into the pod cgroup, whose error
	// fs2 ignores (kept here for the failure message).
	delegateErr := cgroups.WriteFile(filepath.Join(v2, podPath), "cgroup.subtree_control", "+"+lim.controller)

	ctrDir := filepath.Join(v2, ctrPath)
	lib, err := fs2.NewManager(&cgroups.Cgroup{Resources: lim.resources}, ctrDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := lib.Set(lim.resources); err != nil {
		procs, _ := os.ReadFile(filepath.Join(v2, podPath, "cgroup.procs"))
		t.Fatalf("setting the container's %s limit: %v (enabling %s in the pod cgroup: %v; processes in the pod cgroup itself: %q)",
			lim.controller, err, lim.controller, delegateErr, strings.TrimSpace(string(procs)))
	}
	if got, err := cgroups.ReadFile(ctrDir, lim.file); err != nil || strings.TrimSpace(got) != lim.want {
		t.Fatalf("%s = %q, %v; want %s", lim.file, got, err, lim.want)
	}

	// The pod cgroup covers both leaves.
	if err := m.Remove(context.Background(), ref); err == nil {
		t.Fatal("Remove took a pod cgroup whose leaves hold processes")
	}
	if err := m.Kill(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	pod, _ := m.open(ref, false)
	for _, p := range append(slices.Collect(maps.Values(pod.GetPaths())), filepath.Join(v2, podPath)) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there after Remove (%v)", p, err)
		}
	}
}

// removeTree removes the test's cgroup top and what is below it in every
// hierarchy, deepest first (rmdir takes only empty cgroups).
func removeTree(t *testing.T, top string) {
	mounts, err := cgroups.GetCgroupMounts(true)
	if err != nil && !cgroups.IsCgroup2UnifiedMode() {
		t.Logf("listing cgroup mounts: %v", err)
	}
	points := []string{"/sys/fs/cgroup"}
	if !cgroups.IsCgroup2UnifiedMode() {
		points = []string{"/sys/fs/cgroup/unified"}
		for _, mnt := range mounts {
			points = append(points, mnt.Mountpoint)
		}
	}
	for _, p := range points {
		if err := cgroups.RemovePath(filepath.Join(p, top)); err != nil {
			t.Errorf("removing test cgroup %s: %v", filepath.Join(p, top), err)
		}
	}
}
