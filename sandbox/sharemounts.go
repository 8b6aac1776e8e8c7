package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
	if err != nil || rt.vmm == nil {
		return nil, nil
	}
	ns, err := vm.FindShareNamespace(rt.vmm.State(), shareTag, pod.ShareDir)
	if errors.Is(err, vm.ErrShareGone) {
		return nil, nil
	}
	return ns, err
}

// bind mounts src at dst in the share (creating dst as a file or directory
// like src) and records it on c so removal can undo it.
func bind(sm shareMounter, c *Container, src, dst string, dir bool, ro vm.ReadOnly) error {
	if dir {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(dst, os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := sm.Attach(src, dst, ro); err != nil {
		return err
	}
	c.Binds = append(c.Binds, dst)
	return nil
}

// unbindAll undoes every bind of c, newest first, and removes its share dir.
// sm is nil when the VM is gone, and its mounts with it.
func unbindAll(sm shareMounter, c *Container, shareDir string) error {
	var errs []error
	for i := len(c.Binds) - 1; i >= 0; i-- {
		if sm != nil {
			if err := sm.Detach(c.Binds[i]); err != nil && !errors.Is(err, vm.ErrShareGone) {
				errs = append(errs, err)
			}
		}
		// Records from before share namespaces bound on the host: never
		// let RemoveAll below walk into a volume.
		if err := unix.Unmount(c.Binds[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", c.Binds[i], err))
		}
	}
	c.Binds = nil
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(shareDir)
}

// shareMounts binds each CRI mount's host path into the container's share dir
// and returns the mounts as the guest sees them.
func shareMounts(sm shareMounter, c *Container, mounts []*runtimeapi.Mount, ctrShare, guestRoot string) ([]ocispec.Mount, error) {
	var out []ocispec.Mount
	for i, mnt := range mounts {
		src := mnt.GetHostPath()
		if err := validateReadOnly(mnt); err != nil {
			return nil, err
		}
		if !filepath.IsAbs(src) || !filepath.IsAbs(mnt.GetContainerPath()) {
			return nil, fmt.Errorf("%w: mount %q → %q: paths must be absolute", errdefs.ErrInvalidArgument, src, mnt.GetContainerPath())
		}
		// kubelet hands symlinked paths (e.g. /var/run); bind their target.
		resolved, err := filepath.EvalSymlinks(src)
		if errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(src, 0o755); err != nil {
				return nil, err
			}
			resolved, err = filepath.EvalSymlinks(src)
		}
		if err != nil {
			return nil, fmt.Errorf("mount source %s: %w", src, err)
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
		if err := bind(sm, c, resolved, filepath.Join(ctrShare, name), st.IsDir(), ro); err != nil {
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
