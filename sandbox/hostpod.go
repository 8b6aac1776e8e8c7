package sandbox

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
	"github.com/cocoon-runtime/cocoon/sandbox/podcgroup"
)

// HostDriver is the vm.Driver name of host pods: their "VM" is cocoon-agent
// running on the host in host mode (vm/host).
const HostDriver = "host"

// hostNamespaces names the host namespaces a pod asks for.
func hostNamespaces(cfg *runtimeapi.PodSandboxConfig) []string {
	ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	var out []string
	for _, k := range []struct {
		name string
		mode runtimeapi.NamespaceMode
	}{{"network", ns.GetNetwork()}, {"pid", ns.GetPid()}, {"ipc", ns.GetIpc()}} {
		if k.mode == runtimeapi.NamespaceMode_NODE {
			out = append(out, k.name)
		}
	}
	return out
}

// placePod picks the handler a pod runs under. A handler of kind host runs
// any pod as host containers. A pod asking for a host namespace cannot live
// in a VM: the [runtime] host_namespace_pods policy either runs it as host
// containers (under the first handler of kind host, or a built-in one) or
// refuses it.
func (m *Manager) placePod(cfg *runtimeapi.PodSandboxConfig, handler string) (config.Handler, error) {
	if handler == "" {
		handler = m.opts.Runtime.DefaultHandler
	}
	h, ok := m.opts.Runtime.Handlers[handler]
	if !ok {
		return h, fmt.Errorf("%w: no runtime handler %q (have %v)", errdefs.ErrInvalidArgument, handler, m.opts.Runtime.HandlerNames())
	}
	if h.Kind == config.KindHost {
		return h, nil
	}
	host := hostNamespaces(cfg)
	if len(host) == 0 {
		return h, nil
	}
	if m.opts.Runtime.HostNamespacePods != config.HostPodsHost {
		return h, fmt.Errorf("%w: host %v namespace requested: a VM sandbox cannot share the host's namespaces, and [runtime] host_namespace_pods is %q (set it to \"host\", or use a handler of kind host)",
			errdefs.ErrInvalidArgument, host, m.opts.Runtime.HostNamespacePods)
	}
	_, hh := m.opts.Runtime.HostHandler()
	return hh, nil
}

// hostNetwork reports whether the pod shares the host's network namespace.
func hostNetwork(cfg *runtimeapi.PodSandboxConfig) bool {
	return cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE
}

// isHostPod tells a host pod's record from a VM pod's.
func (p *Pod) isHostPod() bool { return p.Kind == config.KindHost }

// hostFiles are the node's files a hostNetwork pod gets when kubelet's
// config gives nothing else; a variable so tests can point elsewhere.
var hostFiles = struct{ hosts, resolvConf string }{"/etc/hosts", "/etc/resolv.conf"}

// hostNetworkFiles gives a hostNetwork pod the node's hosts file, and its
// resolv.conf unless kubelet sent a DNS config.
func hostNetworkFiles(cfg *runtimeapi.PodSandboxConfig, content map[string]string) {
	if data, err := os.ReadFile(hostFiles.hosts); err == nil {
		content["hosts"] = string(data)
	}
	if content["resolv.conf"] == "" {
		if data, err := os.ReadFile(hostFiles.resolvConf); err == nil {
			content["resolv.conf"] = string(data)
		}
	}
}

// setupHostPod asks a host pod's agent for the pod's own namespaces: IPC
// and UTS with the pod's hostname, and a shared PID namespace when the pod
// wants one. The containers join those the pod does not take from the host.
// Nothing else is the agent's to set up: the network is CNI's, DNS and
// hosts are files cocoond binds, sysctls are in each container's spec.
func setupHostPod(ctx context.Context, a agentapi.AgentClient, id string, cfg *runtimeapi.PodSandboxConfig) error {
	_, err := a.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{
		SandboxId:          id,
		Hostname:           podHostname(cfg),
		SharedPidNamespace: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetPid() == runtimeapi.NamespaceMode_POD,
	})
	if err != nil {
		return fmt.Errorf("agent CreateSandbox: %w", err)
	}
	return nil
}

// hostContainerCgroup is the cgroups path of a host pod's container, below
// the pod cgroup as a container is below its pod's with runc: cgroupfs
// <pod cgroup>/<container id>, beside the sandbox leaf that holds the agent
// (the pod cgroup itself holds no process, so cgroup v2 lets the agent's
// libcontainer give the container's cgroup the memory and cpu controllers);
// systemd a scope in kubelet's pod slice (cocoon-ctr-<id>.scope, a name the
// pod cgroup sweep never takes), beside the agent's scope. Without pod
// cgroups (tests), below the default parent.
func hostContainerCgroup(pod *Pod, id string) (string, error) {
	if pod.Cgroup == nil {
		return path.Join(podcgroup.DefaultCgroupfsParent, "cocoon-ctr-"+id), nil
	}
	if pod.Cgroup.Driver == podcgroup.Systemd {
		return pod.Cgroup.Parent + ":cocoon-ctr:" + id, nil
	}
	p, err := pod.Cgroup.Path()
	if err != nil {
		return "", err
	}
	return path.Join(p, id), nil
}

// hostMounts are a host pod's CRI mounts as they are on the host: the
// container binds the host path itself (no share in between).
func hostMounts(mounts []*runtimeapi.Mount) ([]ocispec.Mount, error) {
	var out []ocispec.Mount
	for _, mnt := range mounts {
		resolved, err := mountSource(mnt)
		if err != nil {
			return nil, err
		}
		out = append(out, ocispec.Mount{
			Source: resolved, Destination: mnt.GetContainerPath(),
			ReadOnly: mnt.GetReadonly(), Propagation: mnt.GetPropagation(),
		})
	}
	return out, nil
}

// hostPodFileMounts binds the pod's resolv.conf, hostname and hosts from
// its share dir on the host, unless the CRI mounts already provide them.
func hostPodFileMounts(shareDir string, mounts []*runtimeapi.Mount) []ocispec.Mount {
	out := podFileMounts(mounts)
	for i := range out {
		out[i].Source = filepath.Join(shareDir, podFiles[out[i].Destination])
	}
	return out
}

// takeWarmFor takes a warm VM of the handler for a VM pod; a host pod has
// no VM to take.
func (m *Manager) takeWarmFor(host bool, handler string) *warmVM {
	if host {
		return nil
	}
	return m.takeWarm(handler)
}
