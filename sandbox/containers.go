package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
	"github.com/cocoon-runtime/cocoon/vm"
)

// createContainer prepares a container in a running pod: its image's root
// filesystem and its volumes are bound into the pod's share, the OCI spec is
// built, and the agent creates it (nothing runs until StartContainer).
func (m *Manager) createContainer(ctx context.Context, podID string, cfg *runtimeapi.ContainerConfig, podCfg *runtimeapi.PodSandboxConfig) (string, error) {
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
		ImageRef: cfg.GetImage().GetUserSpecifiedImage(), State: StateCreating, CreatedAt: time.Now().UnixNano(),
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
	var sm shareMounter

	steps := []pipeline.Step{
		{Name: "reserve-name", Run: func(context.Context) (func() error, error) {
			return func() error { m.ctrNames.release(name); return nil }, nil
		}},
		{Name: "record", Run: func(context.Context) (func() error, error) {
			// Before the storage container it names; see recordProgress.
			if err := m.containers.add(c); err != nil {
				return nil, err
			}
			return func() error { return m.containers.remove(id) }, nil
		}},
		{Name: "rootfs", Run: func(context.Context) (func() error, error) {
			if _, err := store.CreateContainer(id, nil, strings.TrimPrefix(img.ID, "sha256:"), "", storageMetadata(pod.ID), nil); err != nil {
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
			if pod.isHostPod() {
				return nil, nil // the container binds its host paths itself
			}
			ns, err := vm.FindShareNamespace(rt.vmm.State(), shareTag, pod.ShareDir)
			if err != nil {
				return nil, fmt.Errorf("%w: pod %s: %v", errdefs.ErrFailedPrecondition, pod.ID, err)
			}
			sm = ns
			undo := func() error { return unbindAll(sm, &c, ctrShare) }
			if err := bind(sm, &c, c.Rootfs, pod.ShareDir, filepath.Join(ctrShare, "rootfs"), true, vm.Writable); err != nil {
				return undo, err
			}
			return undo, nil
		}},
		{Name: "spec", Run: func(context.Context) (func() error, error) {
			in := ocispec.Input{
				ContainerID: id, SandboxID: pod.ID, Config: cfg, Sandbox: podCfg, Image: &img.Config.Config,
				RootfsPath: filepath.Join(guestRoot, "rootfs"), RootfsHostPath: c.Rootfs,
				CgroupsPath: "/cocoon/" + id, PodPIDNamespace: podPIDNamespace(podCfg),
			}
			var err error
			if pod.isHostPod() {
				// The same spec, in host terms: the storage mount as root,
				// host paths as sources, the pod's namespaces and cgroup.
				in.RootfsPath, in.PodPIDNamespace = c.Rootfs, ""
				in.Host = &ocispec.HostPod{NetnsPath: pod.NetnsPath}
				if in.CgroupsPath, err = hostContainerCgroup(&pod, id); err != nil {
					return nil, err
				}
				if in.Mounts, err = hostMounts(cfg.GetMounts()); err != nil {
					return nil, err
				}
				in.Mounts = append(in.Mounts, hostPodFileMounts(pod.ShareDir, cfg.GetMounts())...)
			} else {
				if in.Mounts, err = shareMounts(sm, &c, cfg.GetMounts(), pod.ShareDir, guestRoot); err != nil {
					return nil, err
				}
				in.Mounts = append(in.Mounts, podFileMounts(cfg.GetMounts())...)
			}
			s, err := ocispec.Build(in)
			if err != nil {
				return nil, err
			}
			u := s.Process.User
			c.User = &User{UID: u.UID, GID: u.GID, AdditionalGids: u.AdditionalGids}
			spec, err = json.Marshal(s)
			c.Spec = spec
			return nil, err
		}},
		{Name: "output", Run: func(context.Context) (func() error, error) {
			o, err := newOutput(c.LogPath)
			if err != nil {
				return nil, fmt.Errorf("log file %s: %w", c.LogPath, err)
			}
			o.persist = m.logMarkSaver(id)
			out = o
			return func() error { o.close(); return nil }, nil
		}},
		{Name: "fit-vm", Run: func(ctx context.Context) (func() error, error) {
			if pod.isHostPod() {
				return nil, nil // no VM: the container's own cgroup holds its limits
			}
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
				ctx, cancel := rt.shortCall(context.Background())
				defer cancel()
				_, err := rt.agent.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: id, Force: true})
				return err
			}, nil
		}},
		{Name: "output-streams", Run: func(context.Context) (func() error, error) {
			return nil, out.copyStreams(rt.context(), rt.agent, id, cfg.GetTty(), log)
		}},
		{Name: "persist", Run: func(context.Context) (func() error, error) {
			c.State = StateCreated
			// Read before the store's lock: o.mu is never taken under it
			// (a rotation holds o.mu while it saves into the store).
			mark := out.logMark()
			_, err := m.containers.update(id, func(r *Container) error {
				*r = c
				r.Log = mark
				return nil
			})
			return nil, err
		}},
	}
	recordProgress(m.containers, &c, steps)
	if _, err := pipeline.Run(pipeline.WithName(ctx, "create-container"), log, steps); err != nil {
		return "", err
	}
	rt.mu.Lock()
	rt.outputs[id] = out
	rt.mu.Unlock()
	m.events.publish(EventCreated, id, pod.ID)
	return id, nil
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
