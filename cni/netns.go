package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// DefaultNetnsRoot is where pod network namespaces are bind-mounted. It is
// under /run: a namespace does not outlive a reboot, so neither may its file.
const DefaultNetnsRoot = "/run/cocoon/netns"

// Netns is a network namespace kept alive by a bind mount on a file, so it
// exists without any process in it (the VMM runs in the host namespace and
// only holds the tap) and a restarted cocoond finds it again by path.
type Netns struct {
	path string
}

// NewNetns creates a network namespace bind-mounted at root/id (root ""
// means DefaultNetnsRoot). An existing root/id is ErrAlreadyExists.
func NewNetns(root, id string) (*Netns, error) {
	if root == "" {
		root = DefaultNetnsRoot
	}
	if id == "" || id == "." || id == ".." || strings.ContainsRune(id, '/') {
		return nil, fmt.Errorf("%w: netns id %q", errdefs.ErrInvalidArgument, id)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("netns root: %w", err)
	}
	path := filepath.Join(root, id)
	// O_EXCL: a second sandbox with the same id must never share (or
	// unmount) the first one's namespace.
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("%w: netns %s", errdefs.ErrAlreadyExists, path)
	}
	if err != nil {
		return nil, fmt.Errorf("netns file: %w", err)
	}
	f.Close()

	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	return &Netns{path: path}, nil
}

// OpenNetns returns the namespace bind-mounted at path, e.g. after a
// cocoond restart. A missing path is ErrNotFound.
func OpenNetns(path string) (*Netns, error) {
	ok, err := isNetns(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: netns %s", errdefs.ErrNotFound, path)
	}
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	if !ok {
		return nil, fmt.Errorf("%s is not a network namespace (not mounted)", path)
	}
	return &Netns{path: path}, nil
}

// Path is the bind-mount file; CNI plugins get it as CNI_NETNS.
func (n *Netns) Path() string { return n.path }

// Do runs f on an OS thread that is inside the namespace. f must do its work
// on the calling goroutine: goroutines it starts run in the host namespace.
func (n *Netns) Do(f func() error) error {
	target, err := netns.GetFromPath(n.path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.path, err)
	}
	defer target.Close()
	return onThread(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.path, err)
		}
		return f()
	})
}

// onThread runs f on a locked OS thread of its own and puts the thread back
// into the namespace it came from. Only if that fails does the thread stay
// locked, so the runtime ends it with the goroutine rather than let another
// goroutine run in the pod's namespace. Switching back matters: a locked
// goroutine that ends on the main thread wedges it instead of ending it,
// and a wedged thread would keep the pod's namespace (and its veth) alive.
func onThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		err = f()
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("back to the host netns: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// Remove unmounts the namespace and deletes its file. The namespace itself
// ends when nothing else (a tap's VMM, a plugin) still holds it.
func (n *Netns) Remove() error { return RemoveNetns(n.path) }

// RemoveNetns is Remove from the path alone, for a cocoond that restarted.
// A path that is already gone or no longer mounted is fine.
func RemoveNetns(path string) error {
	// MNT_DETACH: a plugin still inside the namespace must not make the
	// unmount fail; the namespace goes away when it leaves.
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// isNetns reports whether path is a mounted network namespace (nsfs).
func isNetns(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, os.ErrNotExist
		}
		return false, err
	}
	return st.Type == unix.NSFS_MAGIC, nil
}
