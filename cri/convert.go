package cri

import (
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// The one place sandbox/'s records become CRI wire types. A record carries
// its CRI config decoded once (when it was added or loaded), so nothing here
// decodes: kubelet's ListPodSandbox and ListContainers polls only copy.
// sandbox/ never builds these types, and no handler builds them itself.

func podState(s sandbox.PodState) runtimeapi.PodSandboxState {
	if s == sandbox.StateReady {
		return runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}

func containerState(s sandbox.ContainerState) runtimeapi.ContainerState {
	switch s {
	case sandbox.StateCreated:
		return runtimeapi.ContainerState_CONTAINER_CREATED
	case sandbox.StateRunning:
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	case sandbox.StateExited:
		return runtimeapi.ContainerState_CONTAINER_EXITED
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}

var eventTypes = map[string]runtimeapi.ContainerEventType{
	sandbox.EventCreated: runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT,
	sandbox.EventStarted: runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT,
	sandbox.EventStopped: runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT,
	sandbox.EventDeleted: runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT,
}

func toCRIPod(p *sandbox.Pod) *runtimeapi.PodSandbox {
	cfg := p.PodConfig()
	return &runtimeapi.PodSandbox{
		Id: p.ID, Metadata: cfg.GetMetadata(), State: podState(p.State), CreatedAt: p.CreatedAt,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(), RuntimeHandler: p.Handler,
	}
}

func podSandboxStatus(p *sandbox.Pod) *runtimeapi.PodSandboxStatus {
	cfg := p.PodConfig()
	st := &runtimeapi.PodSandboxStatus{
		Id: p.ID, Metadata: cfg.GetMetadata(), State: podState(p.State), CreatedAt: p.CreatedAt,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(), RuntimeHandler: p.Handler,
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}
	if len(p.IPs) > 0 {
		net := &runtimeapi.PodSandboxNetworkStatus{Ip: stripPrefix(p.IPs[0])}
		for _, ip := range p.IPs[1:] {
			net.AdditionalIps = append(net.AdditionalIps, &runtimeapi.PodIP{Ip: stripPrefix(ip)})
		}
		st.Network = net
	}
	return st
}

func stripPrefix(cidr string) string {
	ip, _, _ := strings.Cut(cidr, "/")
	return ip
}

func podAttributes(p *sandbox.Pod) *runtimeapi.PodSandboxAttributes {
	cfg := p.PodConfig()
	return &runtimeapi.PodSandboxAttributes{Id: p.ID, Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations()}
}

// containerImage is the image a container runs, as every CRI answer names
// it: ImageStatus's ID, and what the user asked for.
func containerImage(c *sandbox.Container) (spec *runtimeapi.ImageSpec, ref, id string) {
	return &runtimeapi.ImageSpec{Image: c.ImageID, UserSpecifiedImage: c.ImageRef}, c.ImageID, c.ImageID
}

func toCRIContainer(c *sandbox.Container) *runtimeapi.Container {
	cfg := c.ContainerConfig()
	img, ref, id := containerImage(c)
	return &runtimeapi.Container{
		Id: c.ID, PodSandboxId: c.PodID, Metadata: cfg.GetMetadata(),
		Image: img, ImageRef: ref, ImageId: id,
		State: containerState(c.State), CreatedAt: c.CreatedAt,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
	}
}

func containerStatus(c *sandbox.Container) *runtimeapi.ContainerStatus {
	cfg := c.ContainerConfig()
	img, ref, id := containerImage(c)
	return &runtimeapi.ContainerStatus{
		Id: c.ID, Metadata: cfg.GetMetadata(), State: containerState(c.State),
		CreatedAt: c.CreatedAt, StartedAt: c.StartedAt, FinishedAt: c.FinishedAt,
		ExitCode: c.ExitCode, Reason: c.Reason, Message: c.Message,
		Image: img, ImageRef: ref, ImageId: id,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
		Mounts: cfg.GetMounts(), LogPath: c.LogPath,
		Resources: &runtimeapi.ContainerResources{Linux: cfg.GetLinux().GetResources()},
		User:      containerUser(c.User),
	}
}

// containerUser reports the identity the runtime resolved, so kubelet can
// show which groups a SupplementalGroupsPolicy actually produced.
func containerUser(u *sandbox.User) *runtimeapi.ContainerUser {
	if u == nil {
		return nil
	}
	groups := make([]int64, 0, len(u.AdditionalGids))
	for _, g := range u.AdditionalGids {
		groups = append(groups, int64(g))
	}
	return &runtimeapi.ContainerUser{Linux: &runtimeapi.LinuxContainerUser{
		Uid: int64(u.UID), Gid: int64(u.GID), SupplementalGroups: groups,
	}}
}

func containerAttributes(c *sandbox.Container) *runtimeapi.ContainerAttributes {
	cfg := c.ContainerConfig()
	return &runtimeapi.ContainerAttributes{Id: c.ID, Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations()}
}
