package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
	"github.com/cocoon-runtime/cocoon/vm"
)

// shareMounter mounts into a pod's share where virtiofsd sees it (see
// vm.ShareNamespace: the pod's mounts live in virtiofsd's namespace only).
type shareMounter interface {
	Attach(src, dst string, ro vm.ReadOnly) error
	Detach(dst string) error
}

// shareMounterFor returns the mounter of a pod's running VM, or nil when the
// VM (and with it every mount in its share) is gone.
func (m *Manager) shareMounterFor(pod *Pod) (shareMounter, error) {
	rt, err := m.runtime(pod.ID)
	if err != nil || rt.vmm == nil || pod.isHostPod() {
		return nil, nil // a host pod's containers bind nothing into a share
	}
	ns, err := vm.FindShareNamespace(rt.vmm.State(), shareTag, pod.ShareDir)
	if errors.Is(err, vm.ErrShareGone) {
		return nil, nil
	}
	return ns, err
}

// bind mounts src at dst in the share (creating dst as a file or directory
// like src) and records it on c so removal can undo it. dst is created
// beneath shareDir without following symlinks: the guest may have written
// the tree.
func bind(sm shareMounter, c *Container, src, shareDir, dst string, dir bool, ro vm.ReadOnly) error {
	rel, err := beneathShare(shareDir, dst)
	if err != nil {
		return err
	}
	if dir {
		err = vm.MkdirAllBeneath(shareDir, rel, 0o755)
	} else {
		err = vm.CreateFileBeneath(shareDir, rel, 0o644)
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dst, err)
	}
	if err := sm.Attach(src, dst, ro); err != nil {
		return err
	}
	c.Binds = append(c.Binds, dst)
	return nil
}

// beneathShare is path's name relative to shareDir; it must lie below it.
func beneathShare(shareDir, path string) (string, error) {
	rel, err := filepath.Rel(shareDir, path)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%w: %s is not below the share %s", vm.ErrUnsafePath, path, shareDir)
	}
	return rel, nil
}

// unbindAll undoes every bind of c, newest first, and removes its share dir
// ctrShare (<pod share>/<container id>). sm is nil when the VM is gone, and
// its mounts with it.
func unbindAll(sm shareMounter, c *Container, ctrShare string) error {
	shareDir, id := filepath.Split(ctrShare)
	shareDir = filepath.Clean(shareDir)
	var errs []error
	for i := len(c.Binds) - 1; i >= 0; i-- {
		if sm != nil {
			// ErrUnsafePath: the guest replaced a dir on the way with a
			// symlink, so the mount is no longer where the record says.
			// It stays in virtiofsd's namespace, out of the host's reach,
			// and goes with the VM; removing the dir below detaches it.
			if err := sm.Detach(c.Binds[i]); err != nil && !errors.Is(err, vm.ErrShareGone) && !errors.Is(err, vm.ErrUnsafePath) {
				errs = append(errs, err)
			}
		}
		// Records from before share namespaces bound on the host. The
		// path is resolved beneath the share refusing symlinks: a planted
		// one must not point the unmount at a host mount.
		if rel, err := beneathShare(shareDir, c.Binds[i]); err == nil {
			if err := vm.UnmountBeneath(shareDir, rel); err != nil && !errors.Is(err, vm.ErrUnsafePath) {
				errs = append(errs, err)
			}
		}
	}
	c.Binds = nil
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Never follows a symlink, never crosses into a mount.
	return vm.RemoveAllBeneath(shareDir, id)
}

// mountSource checks a CRI mount and returns its host path resolved:
// kubelet hands symlinked paths (e.g. /var/run), so the target is what gets
// bound, and a missing source is made a directory, as runc does.
func mountSource(mnt *runtimeapi.Mount) (string, error) {
	src := mnt.GetHostPath()
	if err := validateReadOnly(mnt); err != nil {
		return "", err
	}
	if !filepath.IsAbs(src) || !filepath.IsAbs(mnt.GetContainerPath()) {
		return "", fmt.Errorf("%w: mount %q → %q: paths must be absolute", errdefs.ErrInvalidArgument, src, mnt.GetContainerPath())
	}
	resolved, err := filepath.EvalSymlinks(src)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(src, 0o755); err != nil {
			return "", err
		}
		resolved, err = filepath.EvalSymlinks(src)
	}
	if err != nil {
		return "", fmt.Errorf("mount source %s: %w", src, err)
	}
	return resolved, nil
}

// shareMounts binds each CRI mount's host path into the container's share dir
// and returns the mounts as the guest sees them.
func shareMounts(sm shareMounter, c *Container, mounts []*runtimeapi.Mount, shareDir, guestRoot string) ([]ocispec.Mount, error) {
	var out []ocispec.Mount
	for i, mnt := range mounts {
		resolved, err := mountSource(mnt)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(resolved)
		if err != nil {
			return nil, err
		}
		ro, guestReadOnly, err := readOnlyMode(mnt, resolved)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("mounts/%d", i)
		if err := bind(sm, c, resolved, shareDir, filepath.Join(shareDir, c.ID, name), st.IsDir(), ro); err != nil {
			return nil, err
		}
		out = append(out, ocispec.Mount{
			Source: filepath.Join(guestRoot, name), Destination: mnt.GetContainerPath(),
			ReadOnly: guestReadOnly, Propagation: mnt.GetPropagation(),
		})
	}
	return out, nil
}

// validateReadOnly rejects what kubelet must never send: recursive read-only
// needs a read-only, private mount (a recursively read-only tree cannot
// receive mounts from the host).
func validateReadOnly(mnt *runtimeapi.Mount) error {
	if !mnt.GetRecursiveReadOnly() {
		return nil
	}
	if !mnt.GetReadonly() {
		return fmt.Errorf("%w: mount %s: recursive_read_only needs readonly", errdefs.ErrInvalidArgument, mnt.GetContainerPath())
	}
	if p := mnt.GetPropagation(); p != runtimeapi.MountPropagation_PROPAGATION_PRIVATE {
		return fmt.Errorf("%w: mount %s: recursive_read_only needs private propagation, got %s", errdefs.ErrInvalidArgument, mnt.GetContainerPath(), p)
	}
	return nil
}

// readOnlyMode says how the share's copy of a volume is made read-only and
// whether the guest should mount it read-only too. The guest sees the whole
// share as one virtio-fs filesystem, so a read-only bind there covers every
// host submount below the volume: right for recursive read-only, wrong for
// plain read-only, whose submounts (a tmpfs inside a hostPath) stay
// writable. Those are enforced in the share, on the top mount only, where
// the kernel keeps the two apart.
func readOnlyMode(mnt *runtimeapi.Mount, src string) (vm.ReadOnly, bool, error) {
	switch {
	case !mnt.GetReadonly():
		return vm.Writable, false, nil
	case mnt.GetRecursiveReadOnly():
		return vm.ReadOnlyRecursive, true, nil
	}
	nested, err := hasSubmounts(src)
	if err != nil {
		return 0, false, err
	}
	return vm.ReadOnlyTop, !nested, nil
}

// hasSubmounts says whether anything is mounted below dir on the host.
func hasSubmounts(dir string) (bool, error) {
	below, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return false, err
	}
	for _, m := range below {
		if filepath.Clean(m.Mountpoint) != filepath.Clean(dir) {
			return true, nil
		}
	}
	return false, nil
}

// shareSource names the pods' share tmpfs in the mount table, so a restart
// can find the ones no pod claims.
const shareSource = "cocoon-share"

// shareDirName is the pod share's name in the pod's run dir.
const shareDirName = "shared"

// mountShare makes dir the pod's share: a tmpfs of its own, so a guest can
// make the host hold at most sizeMiB (and a bounded number of inodes)
// there. sizeMiB 0 (tests only: the config refuses it) keeps a plain dir.
func mountShare(dir string, sizeMiB uint64) error {
	if err := mkdirs(dir); err != nil {
		return err
	}
	if sizeMiB == 0 {
		return nil
	}
	// An inode per 4 KiB page caps what empty files and dirs can pin.
	opts := fmt.Sprintf("size=%dm,nr_inodes=%d,mode=0711", sizeMiB, sizeMiB*256)
	if err := unix.Mount(shareSource, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount the pod share %s: %w", dir, err)
	}
	return nil
}

// removePodDirs removes a pod's run dir with its share. The share's tmpfs
// is unmounted whole, so nothing the guest wrote there is walked; what
// remains (a share from before shares had a tmpfs) is removed without
// following symlinks or crossing mounts.
func removePodDirs(runDir, shareDir string) error {
	if shareDir != "" {
		rel, err := beneathShare(runDir, shareDir)
		if err != nil {
			return err
		}
		for {
			err := unix.Unmount(shareDir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				break
			}
			if err != nil {
				return fmt.Errorf("unmount the pod share %s: %w", shareDir, err)
			}
		}
		if err := vm.RemoveAllBeneath(runDir, rel); err != nil {
			return err
		}
	}
	return os.RemoveAll(runDir)
}
