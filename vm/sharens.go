package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	return n.do(func(root int) error {
		// The mount point is resolved beneath the share's root refusing
		// symlinks: the guest cannot redirect a volume elsewhere.
		target, err := openBeneath(root, rel, unix.O_PATH)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", dst, err)
		}
		defer unix.Close(target)
		// O_NOFOLLOW opened a planted symlink itself: refuse it.
		if t, err := fileType(target); err != nil || (t != unix.S_IFDIR && t != unix.S_IFREG) {
			return fmt.Errorf("%w: mount point %s is not a file or directory", ErrUnsafePath, dst)
		}
		if err := unix.MoveMount(fd, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
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
	return n.do(func(root int) error { return unmountAt(root, rel) })
}

// SealRoot makes the share's top mount read-only for the guest. The guest
// writes only where a writable mount was attached (a container's rootfs,
// a writable volume); everything else the host reads or creates in the
// share stays out of its reach. Mounts attached later keep their own mode.
func (n *ShareNamespace) SealRoot() error {
	return n.do(func(root int) error {
		if err := unix.MountSetattr(root, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("make the share read-only: %w", err)
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
	mounts, err := mountinfo.GetMountsFromReader(f, mountinfo.PrefixFilter("/"+rel))
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
	return r, nil
}

// do runs fn on a thread that has entered the share's mount namespace,
// with an fd of that namespace's root. virtiofsd pivoted into the share, so
// the root (and any absolute symlink) is the share, never the host's "/".
func (n *ShareNamespace) do(fn func(root int) error) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", n.pid))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrShareGone, err)
	}
	defer ns.Close()
	return onOwnFS(ns, func() error {
		root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(root)
		return fn(root)
	})
}
