package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// A pod's share is a tree a root guest could write through virtio-fs. The
// host touches it only through these functions: every path is resolved
// from a directory fd with openat2, beneath it, refusing symlinks (a planted
// one cannot send the host elsewhere) and mount crossings (removal never
// walks into a volume), and nothing is ever opened in a way that blocks on
// a FIFO or a device.

// ErrUnsafePath means a path in a guest-writable tree is not what the host
// expects there: a symlink, a special file, a mount, or a name that leaves
// the tree.
var ErrUnsafePath = errors.New("unsafe path in the pod share")

// maxRemoveDepth bounds the recursion of RemoveAllBeneath: a guest could nest
// directories as deep as its quota allows.
const maxRemoveDepth = 256

const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openBeneath opens rel below the directory rootFd without following any
// symlink or crossing a mount. O_PATH keeps a FIFO or device from blocking.
func openBeneath(rootFd int, rel string, flags int) (int, error) {
	if rel == "" || rel == "." {
		rel = "."
	} else if filepath.IsAbs(rel) || rel != filepath.Clean(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return -1, fmt.Errorf("%w: %q is not a clean relative path", ErrUnsafePath, rel)
	}
	for {
		fd, err := unix.Openat2(rootFd, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: beneath})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue // EAGAIN: a rename raced the lookup; retry
		}
		// ELOOP: a symlink on the way; EXDEV: a mount; ENOTDIR: something
		// else where a directory was expected (a symlink, with O_NOFOLLOW).
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
			return -1, fmt.Errorf("%w: %s: %w", ErrUnsafePath, rel, err)
		}
		return fd, err
	}
}

// openRoot opens dir, a path the host owns, as the root of a share tree.
func openRoot(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", dir, err)
	}
	return fd, nil
}

// fileType is the S_IFMT bits of what fd refers to.
func fileType(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Mode & unix.S_IFMT, nil
}

// mkdirAllAt creates rel (and its parents) below rootFd, each a real
// directory, and returns an O_PATH fd of the last one.
func mkdirAllAt(rootFd int, rel string, mode uint32) (int, error) {
	fd, err := unix.Dup(rootFd)
	if err != nil {
		return -1, err
	}
	if rel == "." || rel == "" {
		return fd, nil
	}
	for _, name := range strings.Split(rel, "/") {
		if name == "" || name == "." || name == ".." {
			unix.Close(fd)
			return -1, fmt.Errorf("%w: %q", ErrUnsafePath, rel)
		}
		if err := unix.Mkdirat(fd, name, mode); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return -1, fmt.Errorf("mkdir %s: %w", rel, err)
		}
		next, err := openBeneath(fd, name, unix.O_PATH|unix.O_DIRECTORY)
		unix.Close(fd)
		if err != nil {
			if errors.Is(err, unix.ENOTDIR) {
				err = fmt.Errorf("%w: %s is not a directory", ErrUnsafePath, rel)
			}
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// MkdirAllBeneath creates root/rel as a directory, refusing symlinks and
// anything but directories on the way.
func MkdirAllBeneath(root, rel string, mode uint32) error {
	rootFd, err := openRoot(root)
	if err != nil {
		return err
	}
	defer unix.Close(rootFd)
	fd, err := mkdirAllAt(rootFd, rel, mode)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// CreateFileBeneath makes root/rel an empty regular file unless it is one
// already; its parents are created as directories. Anything else in its
// place (a symlink, a FIFO, a directory) is refused, never opened.
func CreateFileBeneath(root, rel string, mode uint32) error {
	rootFd, err := openRoot(root)
	if err != nil {
		return err
	}
	defer unix.Close(rootFd)
	dir, name := filepath.Split(rel)
	dirFd, err := mkdirAllAt(rootFd, filepath.Clean(dir), 0o755)
	if err != nil {
		return err
	}
	defer unix.Close(dirFd)
	return createFileAt(dirFd, name, mode)
}

func createFileAt(dirFd int, name string, mode uint32) error {
	// mknod makes the file without opening it; O_EXCL semantics.
	err := unix.Mknodat(dirFd, name, unix.S_IFREG|mode, 0)
	if err == nil || !errors.Is(err, unix.EEXIST) {
		return err
	}
	fd, err := openBeneath(dirFd, name, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if t, err := fileType(fd); err != nil || t != unix.S_IFREG {
		return fmt.Errorf("%w: %s exists and is not a regular file", ErrUnsafePath, name)
	}
	return nil
}

// WriteFileBeneath writes data to root/rel, which must not exist or be a
// regular file: a symlink or FIFO there is refused, never followed or opened.
func WriteFileBeneath(root, rel string, data []byte, mode uint32) error {
	rootFd, err := openRoot(root)
	if err != nil {
		return err
	}
	defer unix.Close(rootFd)
	dir, name := filepath.Split(rel)
	dirFd, err := mkdirAllAt(rootFd, filepath.Clean(dir), 0o755)
	if err != nil {
		return err
	}
	defer unix.Close(dirFd)
	if err := createFileAt(dirFd, name, mode); err != nil {
		return err
	}
	// O_NONBLOCK: had a FIFO replaced the file since the check, the open
	// fails rather than hangs; the fstat below then refuses it.
	fd, err := openBeneath(dirFd, name, unix.O_WRONLY|unix.O_NONBLOCK)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	if t, err := fileType(fd); err != nil || t != unix.S_IFREG {
		return fmt.Errorf("%w: %s is not a regular file", ErrUnsafePath, rel)
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err = f.Write(data)
	return err
}

// RemoveAllBeneath removes root/rel and everything below it without
// following a symlink (a symlink is removed, not its target) and without
// crossing into a mount (it fails instead of emptying a volume). A missing
// rel is not an error.
func RemoveAllBeneath(root, rel string) error {
	rootFd, err := openRoot(root)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(rootFd)
	dir, name := filepath.Split(filepath.Clean(rel))
	if name == "." || name == ".." || name == "" {
		return fmt.Errorf("%w: cannot remove %q", ErrUnsafePath, rel)
	}
	parent, err := openBeneath(rootFd, filepath.Clean(dir), unix.O_RDONLY|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	return removeAt(parent, name, 0)
}

func removeAt(parent int, name string, depth int) error {
	err := unix.Unlinkat(parent, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	if depth >= maxRemoveDepth {
		return fmt.Errorf("%w: directories nested deeper than %d", ErrUnsafePath, maxRemoveDepth)
	}
	fd, err := openBeneath(parent, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", name, err)
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	for {
		names, rerr := d.Readdirnames(1024)
		for _, n := range names {
			if err := removeAt(fd, n, depth+1); err != nil {
				return err
			}
		}
		if rerr != nil || len(names) == 0 {
			break
		}
	}
	if err := unix.Unlinkat(parent, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// unmountAt lazily unmounts what is mounted at rel below rootFd. The
// parent is resolved safely and the last name is unmounted relative to it
// with UMOUNT_NOFOLLOW, so a symlink planted anywhere on the path cannot
// point the unmount at a host mount. It changes the calling thread's
// working directory: run it through onOwnFS.
func unmountAt(rootFd int, rel string) error {
	dir, name := filepath.Split(rel)
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("%w: cannot unmount %q", ErrUnsafePath, rel)
	}
	parent, err := openBeneath(rootFd, filepath.Clean(dir), unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if err := unix.Fchdir(parent); err != nil {
		return err
	}
	err = unix.Unmount(name, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", rel, err)
	}
	return nil
}

// UnmountBeneath unmounts root/rel in the host's mount namespace, resolving
// rel as unmountAt does.
func UnmountBeneath(root, rel string) error {
	rootFd, err := openRoot(root)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(rootFd)
	return onOwnFS(nil, func() error { return unmountAt(rootFd, filepath.Clean(rel)) })
}

// onOwnFS runs fn on a thread with a filesystem context (root, cwd) of its
// own, after entering the mount namespace ns when it is not nil. The
// thread's context is changed for good, so it is never handed back to the
// Go scheduler: it exits with the goroutine.
func onOwnFS(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Threads share their filesystem context; a mount namespace can
		// only be entered by a thread that has its own.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare fs: %w", err)
			return
		}
		if ns != nil {
			if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
				errc <- fmt.Errorf("enter the share's mount namespace: %w", err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}
