package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
	"github.com/cocoon-runtime/cocoon/cni"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/podcgroup"
)

func TestPlacePodFollowsThePolicy(t *testing.T) {
	t.Parallel()
	withNS := func(ns *runtimeapi.NamespaceOption) *runtimeapi.PodSandboxConfig {
		c := podConfig()
		c.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}}
		return c
	}
	hostNet := withNS(&runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE})
	hostPID := withNS(&runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE})
	hostIPC := withNS(&runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE})
	vmHandler := config.Handler{Kind: config.KindVM, VMM: "qemu"}
	hostHandler := config.Handler{Kind: config.KindHost, VMM: "qemu", BootTimeout: 7}
	for _, tt := range []struct {
		name     string
		policy   string
		handlers map[string]config.Handler
		cfg      *runtimeapi.PodSandboxConfig
		handler  string
		wantKind string
		wantErr  error
	}{
		{name: "a plain pod gets a VM", policy: config.HostPodsHost, cfg: podConfig(), wantKind: config.KindVM},
		{name: "host network runs on the host", policy: config.HostPodsHost, cfg: hostNet, wantKind: config.KindHost},
		{name: "host pid runs on the host", policy: config.HostPodsHost, cfg: hostPID, wantKind: config.KindHost},
		{name: "host ipc runs on the host", policy: config.HostPodsHost, cfg: hostIPC, wantKind: config.KindHost},
		{name: "reject refuses host namespaces", policy: config.HostPodsReject, cfg: hostNet, wantErr: errdefs.ErrInvalidArgument},
		{name: "reject keeps plain pods", policy: config.HostPodsReject, cfg: podConfig(), wantKind: config.KindVM},
		{name: "a host handler runs a plain pod on the host", policy: config.HostPodsReject, cfg: podConfig(), handler: "hosty", wantKind: config.KindHost},
		{name: "a host handler runs host namespaces whatever the policy", policy: config.HostPodsReject, cfg: hostPID, handler: "hosty", wantKind: config.KindHost},
		{name: "the policy picks the configured host handler", policy: config.HostPodsHost, cfg: hostNet,
			handlers: map[string]config.Handler{"h": vmHandler, "hosty": hostHandler}, wantKind: config.KindHost},
		{name: "unknown handler", policy: config.HostPodsHost, cfg: hostNet, handler: "nope", wantErr: errdefs.ErrInvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			handlers := tt.handlers
			if handlers == nil {
				handlers = map[string]config.Handler{"h": vmHandler, "hosty": {Kind: config.KindHost}}
			}
			m := &Manager{opts: Options{Runtime: config.Runtime{DefaultHandler: "h", Handlers: handlers, HostNamespacePods: tt.policy}}}
			h, err := m.placePod(tt.cfg, tt.handler)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Kind != tt.wantKind {
				t.Fatalf("kind %q, want %q", h.Kind, tt.wantKind)
			}
			if tt.handlers != nil && h.BootTimeout != hostHandler.BootTimeout {
				t.Fatalf("got %+v, want the configured host handler", h)
			}
		})
	}
}

// hostPodAgent is a host-mode agent stand-in: it records CreateSandbox and
// refuses what a host-mode agent refuses.
type hostPodAgent struct {
	*agenttest.Hostile
	mu      sync.Mutex
	created []*agentapi.CreateSandboxRequest
}

func (a *hostPodAgent) CreateSandbox(_ context.Context, req *agentapi.CreateSandboxRequest) (*emptypb.Empty, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.created = append(a.created, req)
	return &emptypb.Empty{}, nil
}

func (a *hostPodAgent) DestroySandbox(context.Context, *agentapi.DestroySandboxRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *hostPodAgent) UpdateInterface(context.Context, *agentapi.Interface) (*agentapi.Interface, error) {
	return nil, status.Error(codes.PermissionDenied, "host mode")
}

func (a *hostPodAgent) UpdateRoutes(context.Context, *agentapi.Routes) (*agentapi.Routes, error) {
	return nil, status.Error(codes.PermissionDenied, "host mode")
}

func TestRunHostPod(t *testing.T) {
	t.Parallel()
	withNS := func(ns *runtimeapi.NamespaceOption) *runtimeapi.PodSandboxConfig {
		c := podConfig()
		c.Hostname = "web-0"
		c.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}}
		return c
	}
	for _, tt := range []struct {
		name       string
		cfg        *runtimeapi.PodSandboxConfig
		handler    string
		wantCNI    bool
		wantShared bool
	}{
		{name: "hostNetwork: no CNI, the agent on the host's network", cfg: withNS(&runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER})},
		{name: "hostPID with a pod network: CNI without a tap", cfg: withNS(&runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE}), wantCNI: true},
		{name: "a host handler, shared PID namespace", cfg: withNS(&runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}), handler: "hosty", wantCNI: true, wantShared: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := &hostPodAgent{Hostile: &agenttest.Hostile{}}
			// console: the fake makes the run dir at Start, where the record goes.
			hostDrv := &fakeDriver{agentSock: agenttest.Serve(t, a, agenttest.Healthy{}), console: "agent log"}
			vmDrv := &fakeDriver{}
			netw := &recordingNetwork{}
			m := testManager(t, &fakeNetwork{}, vmDrv)
			m.opts.Network = netw
			m.opts.Drivers[HostDriver] = hostDrv
			m.opts.Runtime.HostNamespacePods = config.HostPodsHost
			m.opts.Runtime.Handlers["hosty"] = config.Handler{Kind: config.KindHost, BootTimeout: config.Duration(5 * time.Second)}
			id, err := m.RunPod(context.Background(), tt.cfg, tt.handler)
			if err != nil {
				t.Fatal(err)
			}
			if len(vmDrv.made) != 0 || len(hostDrv.made) != 1 {
				t.Fatalf("VMs made: %d by the VM driver, %d by the host driver", len(vmDrv.made), len(hostDrv.made))
			}
			spec := hostDrv.made[0].spec
			if len(spec.Shares) != 0 || len(spec.NICs) != 0 || spec.Kernel != "" {
				t.Fatalf("a host pod got VM devices: %+v", spec)
			}
			pod, _ := m.Pod(id)
			if !pod.isHostPod() || pod.State != StateReady {
				t.Fatalf("record %+v", pod)
			}
			if got := len(netw.reqs) == 1; got != tt.wantCNI {
				t.Fatalf("CNI attached: %v, want %v", got, tt.wantCNI)
			}
			if tt.wantCNI {
				if !netw.reqs[0].NoTap || spec.Netns != pod.NetnsPath || pod.NetnsPath == "" {
					t.Fatalf("request %+v, agent netns %q, pod netns %q", netw.reqs[0], spec.Netns, pod.NetnsPath)
				}
			} else if spec.Netns != "" || pod.NetnsPath != "" {
				t.Fatalf("a hostNetwork pod got a netns: %q %q", spec.Netns, pod.NetnsPath)
			}
			if len(a.created) != 1 || a.created[0].GetHostname() != "web-0" || a.created[0].GetSharedPidNamespace() != tt.wantShared || len(a.created[0].GetShares()) != 0 {
				t.Fatalf("CreateSandbox %v", a.created)
			}
			if err := m.StopPod(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			if err := m.RemovePod(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			if tt.wantCNI && netw.detached != 1 {
				t.Fatalf("CNI detached %d times", netw.detached)
			}
		})
	}
}

// recordingNetwork records what pods ask of the network.
type recordingNetwork struct {
	mu       sync.Mutex
	reqs     []PodNetworkRequest
	detached int
}

func (n *recordingNetwork) Attach(_ context.Context, req PodNetworkRequest) (*PodNetwork, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reqs = append(n.reqs, req)
	return &PodNetwork{NetnsPath: "/run/netns/" + req.PodID, IPs: []string{"10.0.0.9/24"}}, nil
}

func (n *recordingNetwork) Detach(context.Context, string, string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.detached++
	return nil
}

func (n *recordingNetwork) Attached() (map[string]string, error) { return nil, nil }

func (n *recordingNetwork) Stats(string) (*cni.InterfaceStats, error) {
	return &cni.InterfaceStats{}, nil
}

func TestHostPodFiles(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n10.1.2.3 the-node\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(resolv, []byte("nameserver 10.9.9.9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := hostFiles
	hostFiles.hosts, hostFiles.resolvConf = hosts, resolv
	t.Cleanup(func() { hostFiles = old })
	hostNet := &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
	for _, tt := range []struct {
		name               string
		linux              *runtimeapi.LinuxPodSandboxConfig
		dns                *runtimeapi.DNSConfig
		wantHosts, wantDNS string
	}{
		{name: "hostNetwork: the node's files", linux: hostNet, wantHosts: "10.1.2.3 the-node", wantDNS: "nameserver 10.9.9.9"},
		{name: "hostNetwork with kubelet's DNS", linux: hostNet, dns: &runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}}, wantHosts: "10.1.2.3 the-node", wantDNS: "nameserver 10.96.0.10"},
		{name: "a pod network: the pod's own", wantHosts: "10.0.0.2\tweb-0", wantDNS: ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			share := t.TempDir()
			cfg := podConfig()
			cfg.Hostname, cfg.Linux, cfg.DnsConfig = "web-0", tt.linux, tt.dns
			if err := writePodFiles(share, cfg, &PodNetwork{IPs: []string{"10.0.0.2/24"}}); err != nil {
				t.Fatal(err)
			}
			gotHosts, _ := os.ReadFile(filepath.Join(share, "hosts"))
			gotDNS, _ := os.ReadFile(filepath.Join(share, "resolv.conf"))
			if !strings.Contains(string(gotHosts), tt.wantHosts) || !strings.Contains(string(gotDNS), tt.wantDNS) || (tt.wantDNS == "" && len(gotDNS) != 0) {
				t.Fatalf("hosts %q, resolv.conf %q", gotHosts, gotDNS)
			}
		})
	}
}

func TestHostContainerCgroup(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("c", 64)
	cgfs, _ := podcgroup.For(podcgroup.Cgroupfs, "/kubepods/burstable/podabc", strings.Repeat("a", 64))
	sd := podcgroup.Ref{Driver: podcgroup.Systemd, Parent: "kubepods-burstable-podabc.slice", PodID: strings.Repeat("a", 64)}
	for _, tt := range []struct {
		name string
		ref  *podcgroup.Ref
		want string
	}{
		{name: "cgroupfs: below the pod cgroup", ref: &cgfs, want: "/kubepods/burstable/podabc/cocoon-" + strings.Repeat("a", 64) + "/" + id},
		{name: "systemd: a scope in kubelet's slice", ref: &sd, want: "kubepods-burstable-podabc.slice:cocoon-ctr:" + id},
		{name: "no pod cgroups", want: "/cocoon/cocoon-ctr-" + id},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := hostContainerCgroup(&Pod{Cgroup: tt.ref}, id)
			if err != nil || got != tt.want {
				t.Fatalf("got %q %v, want %q", got, err, tt.want)
			}
			// Never where the agent is: a container's cgroup is a leaf of
			// its own, so the agent's cgroup stays free of children.
			if tt.ref != nil {
				if procs, _ := tt.ref.ProcsPath(); got == procs || strings.HasPrefix(got, procs+"/") {
					t.Fatalf("container cgroup %q is at or below the agent's %q", got, procs)
				}
			}
		})
	}
}
