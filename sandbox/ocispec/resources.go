package ocispec

import (
	"maps"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// buildNamespaces gives the container its own mount and cgroup namespaces and
// a PID namespace that is its own or the pod's. Network, UTS and IPC are never
// created: a pod's containers share them, and in a pod VM that means the VM's.
func buildNamespaces(opts *runtimeapi.NamespaceOption, podPID string) ([]specs.LinuxNamespace, error) {
	if opts.GetNetwork() == runtimeapi.NamespaceMode_NODE || opts.GetIpc() == runtimeapi.NamespaceMode_NODE ||
		opts.GetPid() == runtimeapi.NamespaceMode_NODE {
		return nil, invalid("host namespaces (hostNetwork, hostIPC, hostPID) cannot be used in a pod VM")
	}
	if u := opts.GetUsernsOptions(); u.GetMode() == runtimeapi.NamespaceMode_POD && (len(u.GetUids()) > 0 || len(u.GetGids()) > 0) {
		return nil, invalid("user namespaces are not supported")
	}
	pid := specs.LinuxNamespace{Type: specs.PIDNamespace}
	switch opts.GetPid() {
	case runtimeapi.NamespaceMode_POD:
		// The caller passes the pod's namespace only when the pod shares one.
		pid.Path = podPID
	case runtimeapi.NamespaceMode_TARGET:
		// An ephemeral container joins its target's namespace; the caller
		// resolves TargetId to a guest path.
		if podPID == "" {
			return nil, invalid("PID namespace of target %q is not known", opts.GetTargetId())
		}
		pid.Path = podPID
	case runtimeapi.NamespaceMode_CONTAINER:
	default:
		return nil, invalid("unknown PID namespace mode %v", opts.GetPid())
	}
	return []specs.LinuxNamespace{
		pid,
		{Type: specs.MountNamespace},
		{Type: specs.CgroupNamespace},
	}, nil
}

// buildResources maps CRI's Linux resources; zero means "not set" in CRI.
// Resources converts CRI resources for UpdateContainerResources: the same
// mapping as a new container's, without the device rules.
func Resources(r *runtimeapi.LinuxContainerResources) *specs.LinuxResources {
	res := buildResources(r, false)
	res.Devices = nil
	return res
}

func buildResources(r *runtimeapi.LinuxContainerResources, privileged bool) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if privileged {
		out.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	} else {
		// Deny all; libcontainer then allows its default devices (null, zero,
		// tty, ptmx, ...).
		out.Devices = []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}
	}
	if r == nil {
		return out
	}
	cpu := &specs.LinuxCPU{Cpus: r.GetCpusetCpus(), Mems: r.GetCpusetMems()}
	if v := r.GetCpuShares(); v > 0 {
		shares := uint64(v)
		cpu.Shares = &shares
	}
	if v := r.GetCpuQuota(); v != 0 {
		quota := v
		cpu.Quota = &quota
	}
	if v := r.GetCpuPeriod(); v > 0 {
		period := uint64(v)
		cpu.Period = &period
	}
	if *cpu != (specs.LinuxCPU{}) {
		out.CPU = cpu
	}
	if limit := r.GetMemoryLimitInBytes(); limit > 0 {
		// Swap (memory+swap) equal to the limit: no swap, unless kubelet's
		// swap support asked for more.
		swap := limit
		if v := r.GetMemorySwapLimitInBytes(); v > 0 {
			swap = v
		}
		out.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &swap}
	}
	for _, h := range r.GetHugepageLimits() {
		out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.GetPageSize(), Limit: h.GetLimit()})
	}
	if len(r.GetUnified()) > 0 {
		out.Unified = maps.Clone(r.GetUnified())
	}
	return out
}

// namespacedSysctl reports whether a sysctl belongs to a namespace a pod owns
// (the list kubelet accepts: IPC and network).
func namespacedSysctl(name string) bool {
	for _, p := range []string{"kernel.shm", "kernel.msg", "fs.mqueue.", "net."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return name == "kernel.sem"
}

// PodSysctls returns the pod's sysctls with dotted names, for the sandbox to
// apply once in the guest. They are not in Build's spec: containers share the
// VM's network and IPC namespaces, where libcontainer refuses per-container
// net.* and IPC sysctls. A sysctl outside those namespaces is InvalidArgument.
func PodSysctls(sb *runtimeapi.PodSandboxConfig) (map[string]string, error) {
	in := sb.GetLinux().GetSysctls()
	if len(in) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	sort.Strings(keys) // a stable error for the same input
	out := make(map[string]string, len(in))
	for _, k := range keys {
		name := normalizeSysctl(k)
		if !namespacedSysctl(name) {
			return nil, invalid("sysctl %q is not namespaced", k)
		}
		out[name] = in[k]
	}
	return out, nil
}

// normalizeSysctl turns "net/ipv4/conf/eth0.1/rp_filter" into the dotted form
// "net.ipv4.conf.eth0/1.rp_filter" (the separators swap, like sysctl(8)).
func normalizeSysctl(name string) string {
	i := strings.IndexAny(name, "./")
	if i < 0 || name[i] == '.' {
		return name
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '/':
			return '.'
		case '.':
			return '/'
		}
		return r
	}, name)
}

// buildHostNamespaces gives a host pod's container the pod's namespaces, as
// containerd does for runc: the host's where the pod asks for them (and the
// host's UTS namespace with its network), else the pod's, which the
// host-mode agent made (api/agent's placeholders) or CNI did (the netns); a
// PID namespace of its own unless the pod shares one; and its own mount and
// cgroup namespaces. The container's own options repeat the pod's (kubelet
// copies them), but only the pod's say what the pod has.
func buildHostNamespaces(pod, ctr *runtimeapi.NamespaceOption, host *HostPod) ([]specs.LinuxNamespace, error) {
	if u := ctr.GetUsernsOptions(); u.GetMode() == runtimeapi.NamespaceMode_POD && (len(u.GetUids()) > 0 || len(u.GetGids()) > 0) {
		return nil, invalid("user namespaces are not supported")
	}
	if pod == nil {
		pod = ctr
	}
	out := []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace}}
	if pod.GetNetwork() != runtimeapi.NamespaceMode_NODE {
		if host.NetnsPath == "" {
			return nil, invalid("the pod has no network namespace")
		}
		out = append(out,
			specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: host.NetnsPath},
			specs.LinuxNamespace{Type: specs.UTSNamespace, Path: agentapi.HostPodUTSNamespace})
	}
	if pod.GetIpc() != runtimeapi.NamespaceMode_NODE {
		out = append(out, specs.LinuxNamespace{Type: specs.IPCNamespace, Path: agentapi.HostPodIPCNamespace})
	}
	switch {
	case pod.GetPid() == runtimeapi.NamespaceMode_NODE:
	case pod.GetPid() == runtimeapi.NamespaceMode_POD, ctr.GetPid() == runtimeapi.NamespaceMode_TARGET:
		// An ephemeral container's target shares the pod's only when the
		// pod has one; the agent refuses the placeholder otherwise.
		out = append(out, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: agentapi.HostPodPIDNamespace})
	default:
		out = append(out, specs.LinuxNamespace{Type: specs.PIDNamespace})
	}
	return out, nil
}
