package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
	"github.com/cocoon-runtime/cocoon/vm"
)

// CreateContainer prepares a container in a running pod: its image's root
// filesystem and its volumes are bound into the pod's share, the OCI spec is
// built, and the agent creates it (nothing runs until StartContainer).
func (m *Manager) CreateContainer(ctx context.Context, podID string, cfg *runtimeapi.ContainerConfig, podCfg *runtimeapi.PodSandboxConfig) (string, error) {
	pod, err := m.Pod(podID)
	if err != nil {
		return "", err
	}
	if pod.State != StateReady {
		return "", fmt.Errorf("%w: pod %s is not ready", errdefs.ErrFailedPrecondition, pod.ID)
	}
	rt, err := m.runtime(pod.ID)
	if err != nil {
		return "", err
	}
	md := cfg.GetMetadata()
	if md.GetName() == "" {
		return "", fmt.Errorf("%w: container metadata needs a name", errdefs.ErrInvalidArgument)
	}
	if cfg.GetImage().GetImage() == "" {
		return "", fmt.Errorf("%w: container needs an image", errdefs.ErrInvalidArgument)
	}
	if podCfg == nil {
		podCfg = pod.PodConfig()
	}
	raw, err := marshalConfig(cfg)
	if err != nil {
		return "", err
	}
	id := newID()
	name := fmt.Sprintf("%s_%s_%d", pod.ID, md.GetName(), md.GetAttempt())
	if err := m.ctrNames.reserve(name, id); err != nil {
		return "", err
	}
	img, err := m.opts.Images.Status(ctx, cfg.GetImage().GetImage())
	if err != nil {
		m.ctrNames.release(name)
		if errors.Is(err, errdefs.ErrNotFound) {
			return "", fmt.Errorf("%w: image %q is not present: pull it first", errdefs.ErrNotFound, cfg.GetImage().GetImage())
		}
		return "", err
	}
	c := Container{
		ID: id, PodID: pod.ID, Name: name, Config: raw, ImageID: img.ID,
		ImageRef: cfg.GetImage().GetUserSpecifiedImage(), State: StateCreated, CreatedAt: time.Now().UnixNano(),
	}
	if c.ImageRef == "" {
		c.ImageRef = cfg.GetImage().GetImage()
	}
	if cfg.GetLogPath() != "" {
		c.LogPath = filepath.Join(podCfg.GetLogDirectory(), cfg.GetLogPath())
	}
	store := m.opts.Images.Store()
	ctrShare := filepath.Join(pod.ShareDir, id)
	guestRoot := filepath.Join(guestShare, id)
	log := m.opts.Log.WithFields(logrus.Fields{"pod": pod.ID, "container": id})
	var spec []byte
	var out *output

	steps := []vm.Step{
		{Name: "reserve-name", Run: func(context.Context) (func() error, error) {
			return func() error { m.ctrNames.release(name); return nil }, nil
		}},
		{Name: "rootfs", Run: func(context.Context) (func() error, error) {
			if _, err := store.CreateContainer(id, nil, strings.TrimPrefix(img.ID, "sha256:"), "", "", nil); err != nil {
				return nil, fmt.Errorf("storage container: %w", err)
			}
			undo := func() error { return store.DeleteContainer(id) }
			mnt, err := store.Mount(id, "")
			if err != nil {
				return undo, fmt.Errorf("mount rootfs: %w", err)
			}
			c.Rootfs = mnt
			return func() error {
				_, _ = store.Unmount(id, true)
				return store.DeleteContainer(id)
			}, nil
		}},
		{Name: "share", Run: func(context.Context) (func() error, error) {
			undo := func() error { return unbindAll(&c, ctrShare) }
			if err := bind(&c, c.Rootfs, filepath.Join(ctrShare, "rootfs"), true); err != nil {
				return undo, err
			}
			return undo, nil
		}},
		{Name: "spec", Run: func(context.Context) (func() error, error) {
			mounts, err := shareMounts(&c, cfg.GetMounts(), ctrShare, guestRoot)
			if err != nil {
				return nil, err
			}
			mounts = append(mounts, podFileMounts(cfg.GetMounts())...)
			s, err := ocispec.Build(ocispec.Input{
				ContainerID: id, SandboxID: pod.ID, Config: cfg, Sandbox: podCfg, Image: &img.Config.Config,
				RootfsPath: filepath.Join(guestRoot, "rootfs"), RootfsHostPath: c.Rootfs,
				Mounts: mounts, CgroupsPath: "/cocoon/" + id,
				PodPIDNamespace: podPIDNamespace(podCfg),
			})
			if err != nil {
				return nil, err
			}
			u := s.Process.User
			c.User = &User{UID: u.UID, GID: u.GID, AdditionalGids: u.AdditionalGids}
			spec, err = json.Marshal(s)
			return nil, err
		}},
		{Name: "output", Run: func(context.Context) (func() error, error) {
			o, err := newOutput(c.LogPath)
			if err != nil {
				return nil, fmt.Errorf("log file %s: %w", c.LogPath, err)
			}
			out = o
			return func() error { o.close(); return nil }, nil
		}},
		{Name: "fit-vm", Run: func(ctx context.Context) (func() error, error) {
			// A VM only grows (guests may refuse to give memory back), so
			// there is nothing to undo.
			return nil, m.growVM(ctx, pod.ID, rt, cfg.GetLinux().GetResources())
		}},
		{Name: "agent-create", Run: func(ctx context.Context) (func() error, error) {
			_, err := rt.agent.CreateContainer(ctx, &agentapi.CreateContainerRequest{
				ContainerId: id, OciSpec: spec, Tty: cfg.GetTty(), Stdin: cfg.GetStdin(), StdinOnce: cfg.GetStdinOnce(),
			})
			if err != nil {
				return nil, fmt.Errorf("agent CreateContainer: %w", err)
			}
			return func() error {
				_, err := rt.agent.RemoveContainer(context.Background(), &agentapi.RemoveContainerRequest{ContainerId: id, Force: true})
				return err
			}, nil
		}},
		{Name: "output-streams", Run: func(context.Context) (func() error, error) {
			streams := []agentapi.ReadOutputRequest_Stream{agentapi.ReadOutputRequest_STDOUT}
			if !cfg.GetTty() {
				streams = append(streams, agentapi.ReadOutputRequest_STDERR)
			}
			for _, s := range streams {
				if err := out.copyStream(context.Background(), rt.agent, id, s, log); err != nil {
					return nil, err
				}
			}
			return nil, nil
		}},
		{Name: "persist", Run: func(context.Context) (func() error, error) {
			return nil, m.containers.add(c)
		}},
	}
	if _, err := vm.RunSteps(ctx, log, steps); err != nil {
		return "", err
	}
	rt.mu.Lock()
	rt.outputs[id] = out
	rt.mu.Unlock()
	m.events.publish(EventCreated, id, pod.ID)
	if err := os.WriteFile(filepath.Join(ctrShare, "config.json"), spec, 0o600); err != nil {
		log.WithError(err).Warn("keeping the container's spec")
	}
	return id, nil
}

// bind bind-mounts src at dst (creating dst as a file or directory like src)
// and records it on c so removal can undo it.
func bind(c *Container, src, dst string, dir bool) error {
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
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s to %s: %w", src, dst, err)
	}
	c.Binds = append(c.Binds, dst)
	return nil
}

// unbindAll undoes every bind of c, newest first, and removes its share dir.
func unbindAll(c *Container, shareDir string) error {
	var errs []error
	for i := len(c.Binds) - 1; i >= 0; i-- {
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
func shareMounts(c *Container, mounts []*runtimeapi.Mount, ctrShare, guestRoot string) ([]ocispec.Mount, error) {
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
		name := fmt.Sprintf("mounts/%d", i)
		dst := filepath.Join(ctrShare, name)
		if err := bind(c, resolved, dst, st.IsDir()); err != nil {
			return nil, err
		}
		guestReadOnly, err := enforceReadOnly(mnt, resolved, dst)
		if err != nil {
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

// enforceReadOnly makes the host-side bind at dst read-only and says whether
// the guest should mount it read-only too. The guest sees the whole share as
// one virtio-fs filesystem, so a read-only bind there covers every host
// submount below it: right for recursive read-only, wrong for plain
// read-only, whose submounts (a tmpfs inside a hostPath) stay writable. Those
// are enforced here on the host, on the top mount only, where the kernel
// keeps the two apart.
func enforceReadOnly(mnt *runtimeapi.Mount, src, dst string) (guestReadOnly bool, err error) {
	if !mnt.GetReadonly() {
		return false, nil
	}
	if mnt.GetRecursiveReadOnly() {
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(-1, dst, unix.AT_RECURSIVE, attr); err != nil {
			return false, fmt.Errorf("make %s recursively read-only: %w", dst, err)
		}
		return true, nil
	}
	if err := remountReadOnly(dst); err != nil {
		return false, err
	}
	nested, err := hasSubmounts(src)
	if err != nil {
		return false, err
	}
	return !nested, nil
}

// remountReadOnly flips the bind at p (not its submounts) to read-only,
// keeping its other per-mount flags.
func remountReadOnly(p string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", p, err)
	}
	keep := uintptr(0)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			keep |= f.ms
		}
	}
	if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|keep, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", p, err)
	}
	return nil
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

// podFileMounts binds the pod's resolv.conf, hostname and hosts (written in
// its share at RunPodSandbox) unless the CRI mounts already provide them.
func podFileMounts(mounts []*runtimeapi.Mount) []ocispec.Mount {
	taken := map[string]bool{}
	for _, m := range mounts {
		taken[filepath.Clean(m.GetContainerPath())] = true
	}
	var out []ocispec.Mount
	for _, dst := range []string{"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"} {
		if !taken[dst] {
			out = append(out, ocispec.Mount{Source: filepath.Join(guestShare, podFiles[dst]), Destination: dst})
		}
	}
	return out
}

// guestPodPIDNamespace is where the agent pins a pod's shared PID namespace.
const guestPodPIDNamespace = "/run/cocoon/pod-pidns"

// podPIDNamespace is the shared PID namespace's guest path when the pod shares one.
func podPIDNamespace(podCfg *runtimeapi.PodSandboxConfig) string {
	if podCfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetPid() == runtimeapi.NamespaceMode_POD {
		return guestPodPIDNamespace
	}
	return ""
}
