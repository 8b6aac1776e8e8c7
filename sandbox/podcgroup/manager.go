package podcgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/cgroups/systemd"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// Manager makes, fills and removes pod cgroups with one driver.
type Manager struct {
	driver string
	// procDir is /proc; tests point it elsewhere.
	procDir string
	// open builds the library's manager for one pod cgroup, or (procs) for
	// the leaf that holds the pod's own processes.
	open func(ref Ref, procs bool) (cgroups.Manager, error)
	// mounts lists the cgroup hierarchies' mount points, for the stray sweep.
	mounts func() ([]string, error)
}

// New returns a Manager for driver. The systemd driver needs systemd as the
// host's init: without it every pod would fail, so cocoond refuses to start.
func New(driver string) (*Manager, error) {
	switch driver {
	case Cgroupfs:
	case Systemd:
		if !systemd.IsRunningSystemd() {
			return nil, fmt.Errorf("%w: cgroup_driver is systemd but systemd is not running on this host (use cgroupfs, as kubelet must too)", errdefs.ErrFailedPrecondition)
		}
	default:
		return nil, fmt.Errorf("%w: cgroup driver %q (want cgroupfs or systemd)", errdefs.ErrInvalidArgument, driver)
	}
	return &Manager{driver: driver, procDir: "/proc", open: openLibrary, mounts: cgroupMounts}, nil
}

// Driver is the configured cgroup driver.
func (m *Manager) Driver() string { return m.driver }

// For derives the pod cgroup of podID under kubelet's parent.
func (m *Manager) For(parent, podID string) (Ref, error) { return For(m.driver, parent, podID) }

// openLibrary builds runc's cgroup manager for ref (procs: its processes'
// leaf): fs (v1 and hybrid, where it joins the v2 hierarchy too), fs2 (v2),
// or systemd for either.
func openLibrary(ref Ref, procs bool) (cgroups.Manager, error) {
	cg, err := libraryConfig(ref, procs)
	if err != nil {
		return nil, err
	}
	return manager.New(cg)
}

// libraryConfig decides which cgroup the library manages: with cgroupfs the
// pod cgroup, or its sandbox leaf for the pod's processes (the pod cgroup
// holds only cgroups, as cgroup v2 wants of one whose children get
// controllers); with systemd the pod's scope either way, a leaf already. The
// pod cgroup sets no limits: kubelet's limits sit on the parent.
func libraryConfig(ref Ref, procs bool) (*cgroups.Cgroup, error) {
	// No device rules are ours to set: the VMM needs /dev/kvm, /dev/net/tun
	// and /dev/vhost-*. cgroupfs never writes rules (Set is never called), so
	// the pod cgroup joins the v1 devices hierarchy with its parent's rules;
	// systemd would turn an empty rule list into DevicePolicy=strict, so it
	// skips devices, as kubelet does for its pod slices.
	cg := &cgroups.Cgroup{Resources: &cgroups.Resources{}}
	if ref.Driver == Systemd {
		cg.SkipDevices = true
		cg.Systemd, cg.Parent, cg.ScopePrefix, cg.Name = true, ref.Parent, scopePrefix, ref.PodID
		return cg, nil
	}
	p, err := ref.Path()
	if procs {
		p, err = ref.ProcsPath()
	}
	if err != nil {
		return nil, err
	}
	cg.Path = p
	return cg, nil
}

// Create makes the pod cgroup ahead of its processes, so a parent that
// cannot take it fails the pod before its VM boots. A systemd scope cannot
// exist without a process: Join makes it.
func (m *Manager) Create(ref Ref) error {
	if ref.Driver == Systemd {
		return nil
	}
	cm, err := m.open(ref, false)
	if err != nil {
		return fmt.Errorf("pod cgroup %s: %w", ref, err)
	}
	if err := cm.Apply(-1); err != nil {
		return fmt.Errorf("create pod cgroup %s: %w", ref, err)
	}
	return nil
}

// Join moves each process and every process it has forked (virtiofsd forks
// its sandboxed worker) into the pod cgroup's processes leaf (ProcsPath),
// making it, and the pod cgroup above it, if needed. A
// process forked while its parent moves is either seen by the walk or born
// in the new cgroup: the kernel orders fork and migration.
func (m *Manager) Join(ctx context.Context, ref Ref, pids ...int) error {
	if len(pids) == 0 {
		return nil
	}
	cm, err := m.open(ref, true)
	if err != nil {
		return fmt.Errorf("pod cgroup %s: %w", ref, err)
	}
	rest := pids
	if !exists(cm) {
		// With systemd this starts the scope around the first process.
		if err := cm.Apply(pids[0]); err != nil {
			return fmt.Errorf("create pod cgroup %s: %w", ref, err)
		}
		rest = pids[1:]
	}
	for _, pid := range rest {
		if err := cm.AddPid("", pid); err != nil {
			return fmt.Errorf("move pid %d into pod cgroup %s: %w", pid, ref, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	kids, err := descendants(m.procDir, pids)
	if err != nil {
		return err
	}
	for _, pid := range kids {
		if err := cm.AddPid("", pid); err != nil && !processGone(m.procDir, pid) {
			return fmt.Errorf("move pid %d into pod cgroup %s: %w", pid, ref, err)
		}
	}
	return nil
}

// exists reports whether the library's cgroup already exists: the unified
// path, or any v1 one.
func exists(cm cgroups.Manager) bool {
	for _, p := range cm.GetPaths() {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// Remove removes the pod cgroup, with the cgroups below it (its sandbox
// leaf, a host pod's containers' cgroups), once its processes are gone: the
// library removes children first. Removing one
// that does not exist succeeds; one that still holds a process is an error
// (the caller's stop stays pending and is retried).
func (m *Manager) Remove(ctx context.Context, ref Ref) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cm, err := m.open(ref, false)
	if err != nil {
		return fmt.Errorf("pod cgroup %s: %w", ref, err)
	}
	if !exists(cm) {
		return nil
	}
	if pids, err := cm.GetAllPids(); err == nil && len(pids) > 0 {
		return fmt.Errorf("%w: pod cgroup %s still holds processes %v", errdefs.ErrFailedPrecondition, ref, pids)
	}
	if err := cm.Destroy(); err != nil {
		return fmt.Errorf("remove pod cgroup %s: %w", ref, err)
	}
	return nil
}

// Kill SIGKILLs every process in the pod cgroup and the cgroups below it
// (its sandbox leaf, a host pod's containers) until none is left, or ctx or killWait ends: a
// host pod whose agent died leaves its containers there, and nothing else
// can reach them. A cgroup that does not exist holds nothing.
func (m *Manager) Kill(ctx context.Context, ref Ref) error {
	cm, err := m.open(ref, false)
	if err != nil {
		return fmt.Errorf("pod cgroup %s: %w", ref, err)
	}
	if !exists(cm) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	for {
		pids, err := cm.GetAllPids()
		if err != nil {
			return fmt.Errorf("pod cgroup %s: %w", ref, err)
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod cgroup %s still holds processes %v: %w", ref, pids, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// killWait bounds Kill: SIGKILLed processes go within milliseconds unless
// stuck in the kernel.
const killWait = 5 * time.Second

// Strays lists the pod cgroups cocoond made, under any parent and in any
// hierarchy, whose pod claimed says nothing claims.
func (m *Manager) Strays(claimed func(podID string) bool) ([]Ref, error) {
	roots, err := m.mounts()
	if err != nil {
		return nil, err
	}
	return findStrays(roots, claimed)
}

// findStrays walks each hierarchy below root for pod cgroups. It does not
// enter one: what is below (its sandbox leaf, its containers' cgroups) is
// the pod's, removed with it.
func findStrays(roots []string, claimed func(podID string) bool) ([]Ref, error) {
	seen := map[Ref]bool{}
	var out []Ref
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil // removed while walking
				}
				return err
			}
			if !d.IsDir() || p == root {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			ref, ok := refFromPath(rel)
			if !ok {
				return nil
			}
			if !claimed(ref.PodID) && !seen[ref] {
				seen[ref] = true
				out = append(out, ref)
			}
			return filepath.SkipDir
		})
		if err != nil {
			return out, fmt.Errorf("walking cgroups under %s: %w", root, err)
		}
	}
	return out, nil
}

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 and v2).
func cgroupMounts() ([]string, error) {
	if cgroups.IsCgroup2UnifiedMode() {
		return []string{"/sys/fs/cgroup"}, nil
	}
	mounts, err := cgroups.GetCgroupMounts(true)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, mnt := range mounts {
		out = append(out, mnt.Mountpoint)
	}
	if cgroups.IsCgroup2HybridMode() {
		out = append(out, "/sys/fs/cgroup/unified")
	}
	return out, nil
}

// descendants lists every process below pids, from each process's parent in
// <procDir>/<pid>/stat.
func descendants(procDir string, pids []int) ([]int, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentOf(procDir, pid); ok {
			children[ppid] = append(children[ppid], pid)
		}
	}
	var out []int
	queue := append([]int(nil), pids...)
	seen := map[int]bool{}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out, nil
}

// parentOf reads a process's parent pid: the field after the state, which
// follows the last ')' (the command name may contain anything).
func parentOf(procDir string, pid int) (int, bool) {
	data, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

func processGone(procDir string, pid int) bool {
	_, err := os.Stat(filepath.Join(procDir, strconv.Itoa(pid)))
	return errors.Is(err, os.ErrNotExist)
}
