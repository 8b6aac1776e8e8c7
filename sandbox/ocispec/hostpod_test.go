package ocispec

import (
	"fmt"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

func TestHostPodNamespaces(t *testing.T) {
	const netns = "/run/cocoon/netns/p"
	mnt, cg := specs.LinuxNamespace{Type: specs.MountNamespace}, specs.LinuxNamespace{Type: specs.CgroupNamespace}
	podNet := specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns}
	podUTS := specs.LinuxNamespace{Type: specs.UTSNamespace, Path: agentapi.HostPodUTSNamespace}
	podIPC := specs.LinuxNamespace{Type: specs.IPCNamespace, Path: agentapi.HostPodIPCNamespace}
	podPID := specs.LinuxNamespace{Type: specs.PIDNamespace, Path: agentapi.HostPodPIDNamespace}
	ownPID := specs.LinuxNamespace{Type: specs.PIDNamespace}
	for _, tt := range []struct {
		name  string
		opts  *runtimeapi.NamespaceOption
		netns string
		want  []specs.LinuxNamespace
		fail  bool
	}{
		{name: "hostNetwork: the host's network and UTS", opts: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER},
			want: []specs.LinuxNamespace{mnt, cg, podIPC, ownPID}},
		{name: "hostPID: the host's PIDs, the pod's network", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE}, netns: netns,
			want: []specs.LinuxNamespace{mnt, cg, podNet, podUTS, podIPC}},
		{name: "hostIPC", opts: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER}, netns: netns,
			want: []specs.LinuxNamespace{mnt, cg, podNet, podUTS, ownPID}},
		{name: "all the host's", opts: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_NODE, Ipc: runtimeapi.NamespaceMode_NODE},
			want: []specs.LinuxNamespace{mnt, cg}},
		{name: "a shared PID namespace", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}, netns: netns,
			want: []specs.LinuxNamespace{mnt, cg, podNet, podUTS, podIPC, podPID}},
		{name: "a pod network without a netns", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}, fail: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := input(t)
			in.Config.Linux = linuxSC(nsSC(tt.opts))
			in.Sandbox = &runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{
				SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: tt.opts},
				Sysctls:         map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
			}}
			in.Host = &HostPod{NetnsPath: tt.netns}
			s, err := Build(in)
			if tt.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(s.Linux.Namespaces) != fmt.Sprint(tt.want) {
				t.Fatalf("namespaces\n got %v\nwant %v", s.Linux.Namespaces, tt.want)
			}
			// The pod's sysctls are the container's to set in its namespaces.
			if s.Linux.Sysctl["net.ipv4.ip_unprivileged_port_start"] != "0" {
				t.Fatalf("sysctls %v", s.Linux.Sysctl)
			}
		})
	}
}
