package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer creates a container in a running pod; it does not run it.
func (s *Server) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, fieldInvalid("pod_sandbox_id", "is required")
	}
	if err := validateContainerConfig("config", req.GetConfig()); err != nil {
		return nil, err
	}
	pod, err := s.pods.Pod(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	// The pod's own record, not the request's sandbox_config, says whether
	// the sandbox is privileged: containerd and CRI-O refuse a privileged
	// container in a sandbox that is not.
	podCfg := pod.PodConfig()
	if req.GetConfig().GetLinux().GetSecurityContext().GetPrivileged() && !podPrivileged(podCfg) {
		return nil, fieldInvalid("config.linux.security_context.privileged", "pod sandbox %s is not privileged", pod.ID)
	}
	// sandbox/ joins log_path to the request's sandbox_config log directory
	// when one is given, else to the pod's.
	logDir, logDirField := podCfg.GetLogDirectory(), "pod log_directory"
	if sc := req.GetSandboxConfig(); sc != nil {
		logDir, logDirField = sc.GetLogDirectory(), "sandbox_config.log_directory"
		if logDir != "" {
			if err := validateAbsPath(logDirField, logDir); err != nil {
				return nil, err
			}
		}
	}
	// Joined to "" the log would land in cocoond's working directory.
	if req.GetConfig().GetLogPath() != "" && logDir == "" {
		return nil, fieldInvalid("config.log_path", "is set but the %s is empty", logDirField)
	}
	id, err := s.pods.CreateContainer(ctx, req.GetPodSandboxId(), req.GetConfig(), req.GetSandboxConfig())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}
