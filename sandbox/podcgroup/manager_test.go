package podcgroup

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"
)

func mkdirs(t *testing.T, root string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindStraysTakesUnclaimedPodCgroupsOnceAcrossHierarchies(t *testing.T) {
	claimedPod := strings.Repeat("a", 64)
	strayFs := strings.Repeat("b", 64)
	straySd := strings.Repeat("c", 64)
	memory, pids := t.TempDir(), t.TempDir()
	for _, root := range []string{memory, pids} {
		mkdirs(t, root,
			"kubepods/burstable/pod1/cocoon-"+claimedPod,
			"kubepods/burstable/pod1/cocoon-"+strayFs+"/inner/cocoon-"+strings.Repeat("d", 64),
			"kubepods/burstable/pod1/other",
			"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2.slice/cocoon-"+straySd+".scope",
			"system.slice/cocoond.service",
		)
	}
	// A hierarchy unmounted meanwhile has nothing to reclaim.
	got, err := findStrays([]string{memory, pids, filepath.Join(memory, "missing")}, func(id string) bool { return id == claimedPod })
	if err != nil {
		t.Fatal(err)
	}
	want := []Ref{
		{Driver: Cgroupfs, Parent: "/kubepods/burstable/pod1", PodID: strayFs},
		{Driver: Systemd, Parent: "kubepods-besteffort-pod2.slice", PodID: straySd},
	}
	slices.SortFunc(got, func(a, b Ref) int { return strings.Compare(a.PodID, b.PodID) })
	if !slices.Equal(got, want) {
		t.Fatalf("strays = %+v, want %+v", got, want)
	}
}

// fakeProc writes <dir>/<pid>/stat files with the given parents.
func fakeProc(t *testing.T, parents map[int]int) string {
	dir := t.TempDir()
	for pid, ppid := range parents {
		mkdirs(t, dir, strconv.Itoa(pid))
		// A command name with ") " in it must not confuse the parser.
		stat := fmt.Sprintf("%d (evil) 1 2) S %d 1 1 0 -1\n", pid, ppid)
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(pid), "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mkdirs(t, dir, "self", "sys")
	return dir
}

func TestDescendantsFollowsEveryGeneration(t *testing.T) {
	proc := fakeProc(t, map[int]int{
		10: 1,          // the VMM
		20: 1,          // virtiofsd
		21: 20, 22: 21, // its worker and the worker's child
		30: 1, 31: 30, // unrelated
	})
	got, err := descendants(proc, []int{10, 20})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []int{21, 22}; !slices.Equal(got, want) {
		t.Fatalf("descendants = %v, want %v", got, want)
	}
}

func TestNewRefusesUnknownDrivers(t *testing.T) {
	if _, err := New("cgroupv3"); err == nil {
		t.Fatal("New accepted an unknown driver")
	}
}

// TestCgroupfsJoinAndRemoveOnThisHost makes a real pod cgroup with the
// cgroupfs driver, moves a process and its child into it, and removes it
// after they exit. It touches the host's cgroups, so it needs root.
func TestCgroupfsJoinAndRemoveOnThisHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to make cgroups on the host")
	}
	m, err := New(Cgroupfs)
	if err != nil {
		t.Fatal(err)
	}
	parent := fmt.Sprintf("/cocoon-test-%d/podtest", os.Getpid())
	ref, err := m.For(parent, strings.Repeat("e", 64))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTestParents(t, "/"+strings.Split(parent, "/")[1]) })
	if err := m.Create(ref); err != nil {
		t.Fatal(err)
	}
	// sh forks sleep: the child must follow its parent.
	cmd := exec.Command("sh", "-c", "sleep 60 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	var child int
	for i := 0; i < 200 && child == 0; i++ {
		kids, _ := descendants("/proc", []int{cmd.Process.Pid})
		if len(kids) > 0 {
			child = kids[0]
		}
	}
	if child == 0 {
		t.Fatal("sh never forked sleep")
	}
	if err := m.Join(context.Background(), ref, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// The processes are in the sandbox leaf, the pod cgroup holds none itself.
	want, _ := ref.ProcsPath()
	for _, pid := range []int{cmd.Process.Pid, child} {
		if lines := cgroupLinesNotAt(t, pid, want); len(lines) > 0 {
			t.Errorf("pid %d is not in %s everywhere: %v", pid, want, lines)
		}
	}
	if err := m.Remove(context.Background(), ref); err == nil {
		t.Fatal("Remove took a cgroup that still holds processes")
	}
	_ = cmd.Process.Kill()
	_ = syscallKill(child)
	_ = cmd.Wait()
	killed = true
	waitGone(t, child)
	if err := m.Remove(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	cm, _ := m.open(ref, false)
	for _, p := range cm.GetPaths() {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there after Remove (%v)", p, err)
		}
	}
	if err := m.Remove(context.Background(), ref); err != nil {
		t.Fatalf("a second Remove = %v, want nil", err)
	}
}

// cgroupLinesNotAt returns the lines of /proc/<pid>/cgroup (one per
// hierarchy) that do not name path.
func cgroupLinesNotAt(t *testing.T, pid int, path string) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[2] != path {
			bad = append(bad, line)
		}
	}
	return bad
}

func removeTestParents(t *testing.T, top string) {
	paths, err := cgroups.GetCgroupMounts(true)
	if err != nil {
		return
	}
	for _, mnt := range append(paths, cgroups.Mount{Mountpoint: "/sys/fs/cgroup/unified"}) {
		dir := filepath.Join(mnt.Mountpoint, top)
		// Deepest first: rmdir takes only empty cgroups.
		_ = os.Remove(filepath.Join(dir, "podtest"))
		_ = os.Remove(dir)
	}
}
