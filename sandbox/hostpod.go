package sandbox

import (
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
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
