package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// ContainerStatus reports a container's state, exit, image, mounts and log path.
func (s *Server) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	c, err := s.pods.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: containerStatus(&c)}
	if req.GetVerbose() {
		info, _ := json.Marshal(map[string]any{"pod": c.PodID, "rootfs": c.Rootfs, "binds": c.Binds})
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

func containerStatus(c *sandbox.Container) *runtimeapi.ContainerStatus {
	cfg := c.ContainerConfig()
	return &runtimeapi.ContainerStatus{
		Id: c.ID, Metadata: cfg.GetMetadata(), State: containerState(c.State),
		CreatedAt: c.CreatedAt, StartedAt: c.StartedAt, FinishedAt: c.FinishedAt,
		ExitCode: c.ExitCode, Reason: c.Reason, Message: c.Message,
		Image:    &runtimeapi.ImageSpec{Image: c.ImageID, UserSpecifiedImage: c.ImageRef},
		ImageRef: c.ImageID, ImageId: c.ImageID,
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
