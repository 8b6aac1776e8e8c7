package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Container root filesystems and volumes reach the guest through the share
// that virtiofsd serves. They are mounted in virtiofsd's own mount namespace
// (virtiofsd's namespace sandbox pivots into the share, so "/" there is the
// share) and never in the host's: the host's mount table stays free of pod
// mounts, a volume's source can be unmounted or removed on the host while a
// pod uses it (as kubelet and critest do), and every mount of a pod goes
// away with its virtiofsd, whatever happened to cocoond.

// ErrShareGone means the share's virtiofsd is not running (the VM stopped):
// there is nothing mounted to undo.
var ErrShareGone = errors.New("share is not served")

// ShareNamespace is the mount namespace of the virtiofsd serving one share.
type ShareNamespace struct {
	pid  int    // virtiofsd's worker, which holds the namespace
	root string // the share's host path, "/" inside the namespace
}

// ReadOnly says how a mount is made read-only.
type ReadOnly int

const (
	Writable ReadOnly = iota
	// ReadOnlyTop makes the mount read-only but not the mounts below it.
	ReadOnlyTop
	// ReadOnlyRecursive makes the mount and every mount below it read-only.
	ReadOnlyRecursive
)

// shareReadyTimeout bounds the wait for virtiofsd to enter its sandbox.
const shareReadyTimeout = 5 * time.Second

// FindShareNamespace locates the namespace of the virtiofsd serving tag for
// the VM in st, waiting briefly for a virtiofsd that is still starting.
func FindShareNamespace(st *State, tag, root string) (*ShareNamespace, error) {
	name := "virtiofsd-" + tag
	var helper *Process
	for i := range st.Helpers {
		if st.Helpers[i].Name == name {
			helper = &st.Helpers[i]
		}
	}
	if helper == nil {
		return nil, fmt.Errorf("%w: VM %s has no %s", ErrShareGone, st.ID, name)
	}
	deadline := time.Now().Add(shareReadyTimeout)
	for {
		if !helper.Alive() {
			return nil, fmt.Errorf("%w: %s of VM %s exited", ErrShareGone, name, st.ID)
		}
		if pid, ok := sandboxedChild(helper.Pid, root); ok {
			return &ShareNamespace{pid: pid, root: root}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s of VM %s did not enter its namespace sandbox within %s", name, st.ID, shareReadyTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sandboxedChild finds the worker virtiofsd forks into its namespaces and
// reports whether it has pivoted into the share yet: only then is "/" in
// its namespace the share.
func sandboxedChild(pid int, root string) (int, bool) {
	var want unix.Stat_t
	if err := unix.Stat(root, &want); err != nil {
		return 0, false
	}
	for _, child := range ChildPids("/proc", pid) {
		var got unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/root/", child), &got); err == nil && got.Dev == want.Dev && got.Ino == want.Ino {
			return child, true
		}
	}
	return 0, false
}

// ChildPids lists the live children of pid's main thread, read from procDir
// (normally /proc).
func ChildPids(procDir string, pid int) []int {
	data, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "task", strconv.Itoa(pid), "children"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// Attach mounts src (with everything mounted below it) at dst, a path under
// the share's root that must exist, inside the share's namespace.
func (n *ShareNamespace) Attach(src, dst string, ro ReadOnly) error {
	rel, err := n.rel(dst)
	if err != nil {
		return err
	}
	// A detached copy of src's mount tree, taken in our namespace where src
	// is visible, made read-only as asked before anyone can see it.
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("clone mount tree of %s: %w", src, err)
	}
	defer unix.Close(fd)
	if ro != Writable {
		flags := unix.AT_EMPTY_PATH
		if ro == ReadOnlyRecursive {
			flags |= unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(fd, "", uint(flags), &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("make %s read-only: %w", src, err)
		}
	}
	return n.do(func() error {
		if err := unix.MoveMount(fd, "", unix.AT_FDCWD, rel, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("mount %s at %s in the share: %w", src, dst, err)
		}
		return nil
	})
}

// Detach unmounts whatever is mounted at dst inside the share's namespace.
func (n *ShareNamespace) Detach(dst string) error {
	rel, err := n.rel(dst)
	if err != nil {
		return err
	}
	return n.do(func() error {
		err := unix.Unmount(rel, unix.MNT_DETACH)
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s in the share: %w", dst, err)
		}
		return nil
	})
}

// Mounted lists the mount points below dst inside the share's namespace,
// as host paths; tests use it to see what a pod holds.
func (n *ShareNamespace) Mounted(dst string) ([]string, error) {
	rel, err := n.rel(dst)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", n.pid))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrShareGone, err)
	}
	defer f.Close()
	mounts, err := mountinfo.GetMountsFromReader(f, mountinfo.PrefixFilter(rel))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		out = append(out, filepath.Join(n.root, m.Mountpoint))
	}
	return out, nil
}

func (n *ShareNamespace) rel(dst string) (string, error) {
	r, err := filepath.Rel(n.root, dst)
	if err != nil || r == "." || strings.HasPrefix(r, "..") {
		return "", fmt.Errorf("%s is not below the share %s", dst, n.root)
	}
	return "/" + r, nil
}

// do runs fn on a thread that has entered the share's mount namespace.
// The thread's filesystem context is changed for good, so it is never
// handed back to the Go scheduler: it exits with the goroutine.
func (n *ShareNamespace) do(fn func() error) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", n.pid))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrShareGone, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Threads share their filesystem context; a mount namespace can
		// only be entered by a thread that has its own.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare fs: %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("enter the share's mount namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
