package cri

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox"
)

// fakePods is a hand-written podManager: it knows a few pods and counts the
// calls that got past validation.
type fakePods struct {
	pods  map[string]sandbox.Pod
	calls []string
}

var errUnused = errors.New("fakePods: not used by this test")

func (f *fakePods) RunPod(_ context.Context, _ *runtimeapi.PodSandboxConfig, _ string) (string, error) {
	f.calls = append(f.calls, "RunPod")
	return "pod-new", nil
}
func (f *fakePods) StopPod(context.Context, string) error   { return errUnused }
func (f *fakePods) RemovePod(context.Context, string) error { return errUnused }
func (f *fakePods) Pod(id string) (sandbox.Pod, error) {
	p, ok := f.pods[id]
	if !ok {
		return sandbox.Pod{}, fmt.Errorf("%w: pod %s", errdefs.ErrNotFound, id)
	}
	return p, nil
}
func (f *fakePods) Pods() []sandbox.Pod { return nil }
func (f *fakePods) CreateContainer(_ context.Context, podID string, _ *runtimeapi.ContainerConfig, _ *runtimeapi.PodSandboxConfig) (string, error) {
	f.calls = append(f.calls, "CreateContainer")
	return "ctr-new", nil
}
func (f *fakePods) StartContainer(context.Context, string) error { return errUnused }
func (f *fakePods) StopContainer(context.Context, string, time.Duration) error {
	return errUnused
}
func (f *fakePods) RemoveContainer(context.Context, string) error { return errUnused }
func (f *fakePods) Container(string) (sandbox.Container, error) {
	return sandbox.Container{}, errUnused
}
func (f *fakePods) Containers() []sandbox.Container { return nil }
func (f *fakePods) ExecSync(context.Context, string, []string, time.Duration) (*sandbox.ExecResult, error) {
	return nil, errUnused
}
func (f *fakePods) ReopenContainerLog(string) error                       { return errUnused }
func (f *fakePods) PodNetworkStats(string) (*sandbox.NetworkStats, error) { return nil, errUnused }
func (f *fakePods) ContainerStats(context.Context, string) (*sandbox.Stats, error) {
	return nil, errUnused
}
func (f *fakePods) UpdateContainerResources(context.Context, string, *runtimeapi.LinuxContainerResources) error {
	f.calls = append(f.calls, "UpdateContainerResources")
	return nil
}
func (f *fakePods) Subscribe() (<-chan sandbox.Event, func()) { return nil, func() {} }
func (f *fakePods) UpdatePodResources(context.Context, string, *runtimeapi.LinuxContainerResources) error {
	f.calls = append(f.calls, "UpdatePodResources")
	return nil
}

func podRecord(t *testing.T, id string, cfg *runtimeapi.PodSandboxConfig) sandbox.Pod {
	t.Helper()
	raw, err := protojson.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sandbox.Pod{ID: id, Config: raw, State: sandbox.StateReady}
}

const uuid = "3f1c2b9e-8d7a-4c1e-9b2f-0a6d5e4c3b21"

// critestPod is what cri-tools v1.36.0's framework sends (pkg/framework/util.go).
func critestPod() *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name: "PodSandbox-for-multi-container-test-" + uuid, Uid: "cri-test-uid" + uuid,
			Namespace: "cri-test-namespace" + uuid, Attempt: 2,
		},
		LogDirectory: "/tmp/podLogTest3902/PodSandbox-with-log-directory-" + uuid,
		Labels:       map[string]string{"foo": "bar"},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/kubepods/besteffort"},
	}
}

// kubeletPod is what kubelet sends for a Deployment's pod.
func kubeletPod() *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name: "nginx-7c5ddbdf54-x8x7z", Uid: uuid, Namespace: "default", Attempt: 0,
		},
		Hostname:     "nginx-7c5ddbdf54-x8x7z",
		LogDirectory: "/var/log/pods/default_nginx-7c5ddbdf54-x8x7z_" + uuid,
		PortMappings: []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080}},
		Labels: map[string]string{
			"io.kubernetes.pod.name": "nginx-7c5ddbdf54-x8x7z", "io.kubernetes.pod.namespace": "default",
			"io.kubernetes.pod.uid": uuid, "app": "nginx", "pod-template-hash": "7c5ddbdf54",
		},
		Annotations: map[string]string{"kubernetes.io/config.seen": "2026-12-06T02:00:00Z", "kubernetes.io/config.source": "api"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "kubepods-burstable-pod3f1c2b9e.slice",
			Resources:    &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 128 << 20},
		},
	}
}

func kubeletContainer() *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "nginx", Attempt: 3},
		Image:    &runtimeapi.ImageSpec{Image: "sha256:abc"},
		LogPath:  "nginx/3.log",
		Labels:   map[string]string{"io.kubernetes.container.name": "nginx", "io.kubernetes.pod.name": "nginx-7c5ddbdf54-x8x7z"},
		Annotations: map[string]string{
			"io.kubernetes.container.hash": "1a2b3c", "io.kubernetes.container.ports": `[{"containerPort":80,"protocol":"TCP"}]`,
		},
		Linux: &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{
			CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 128 << 20,
			MemorySwapLimitInBytes: 128 << 20, OomScoreAdj: 999, CpusetCpus: "0-1,3", CpusetMems: "0",
			HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB"}, {PageSize: "1GB"}},
			Unified:        map[string]string{"memory.high": "120000000", "memory.oom.group": "1", "hugetlb.2MB.max": "max"},
		}},
	}
}

func critestContainer() *runtimeapi.ContainerConfig {
	name := "container-with-RunAsGroup-without-RunAsUser-test-" + uuid // 85 characters
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: 2},
		Image:    &runtimeapi.ImageSpec{Image: "registry.k8s.io/e2e-test-images/busybox:1.29-2"},
		LogPath:  name + ".log",
	}
}

func privileged(c *runtimeapi.ContainerConfig) *runtimeapi.ContainerConfig {
	c.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}
	return c
}

// with returns a copy of base changed by edit, so each row names only its fault.
func with[T any](base func() T, edit func(T)) T {
	v := base()
	edit(v)
	return v
}

func TestValidateRequests(t *testing.T) {
	t.Parallel()
	plainPod := critestPod()
	privPod := critestPod()
	privPod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}
	noLogPod := critestPod()
	noLogPod.LogDirectory = ""

	type call func(context.Context, *Server) (any, error)
	run := func(c *runtimeapi.PodSandboxConfig) call {
		return func(ctx context.Context, s *Server) (any, error) {
			return s.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: c})
		}
	}
	create := func(pod string, c *runtimeapi.ContainerConfig) call {
		return func(ctx context.Context, s *Server) (any, error) {
			return s.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: c})
		}
	}
	updateCtr := func(r *runtimeapi.LinuxContainerResources) call {
		return func(ctx context.Context, s *Server) (any, error) {
			return s.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: "ctr", Linux: r})
		}
	}
	updatePod := func(r *runtimeapi.LinuxContainerResources) call {
		return func(ctx context.Context, s *Server) (any, error) {
			return s.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: "plain", Resources: r})
		}
	}
	podWith := func(edit func(*runtimeapi.PodSandboxConfig)) call { return run(with(critestPod, edit)) }
	ctrWith := func(edit func(*runtimeapi.ContainerConfig)) call {
		return create("plain", with(kubeletContainer, edit))
	}
	res := func(edit func(*runtimeapi.LinuxContainerResources)) *runtimeapi.LinuxContainerResources {
		r := &runtimeapi.LinuxContainerResources{}
		edit(r)
		return r
	}
	long := func(n int) string { return strings.Repeat("a", n) }

	for _, tt := range []struct {
		name string
		rpc  string
		call call
		code codes.Code
		msg  string // a fragment naming the field
	}{
		// Requests kubelet and critest send must pass.
		{"critest pod", "RunPodSandbox", run(critestPod()), codes.OK, ""},
		{"kubelet pod", "RunPodSandbox", run(kubeletPod()), codes.OK, ""},
		{"critest privileged pod", "RunPodSandbox", run(privPod), codes.OK, ""},
		{"pod name of 253 characters", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = long(253) }), codes.OK, ""},
		{"critest container", "CreateContainer", create("plain", critestContainer()), codes.OK, ""},
		{"kubelet container with resources", "CreateContainer", create("plain", kubeletContainer()), codes.OK, ""},
		{"privileged container in privileged pod", "CreateContainer", create("priv", privileged(critestContainer())), codes.OK, ""},
		{"container without log path in pod without log directory", "CreateContainer", create("nolog", with(critestContainer, func(c *runtimeapi.ContainerConfig) { c.LogPath = "" })), codes.OK, ""},
		{"kubelet update", "UpdateContainerResources", updateCtr(kubeletContainer().Linux.Resources), codes.OK, ""},
		{"unlimited quota and swap", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.CpuQuota, r.MemorySwapLimitInBytes = -1, -1 })), codes.OK, ""},
		{"pod update", "UpdatePodSandboxResources", updatePod(kubeletPod().Linux.Resources), codes.OK, ""},

		// Pod metadata.
		{"no pod config", "RunPodSandbox", run(nil), codes.InvalidArgument, "config: is required"},
		{"no pod metadata", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata = nil }), codes.InvalidArgument, "config.metadata: is required"},
		{"empty pod name", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "" }), codes.InvalidArgument, "config.metadata.name: is required"},
		{"4 MiB pod name", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = long(4 << 20) }), codes.InvalidArgument, "config.metadata.name: must be at most 253 characters"},
		{"pod name with slash", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "a/../b" }), codes.InvalidArgument, "config.metadata.name"},
		{"pod name dot-dot", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = ".." }), codes.InvalidArgument, "config.metadata.name"},
		{"pod name with NUL", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "a\x00b" }), codes.InvalidArgument, "config.metadata.name"},
		{"pod name with newline", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "a\nb" }), codes.InvalidArgument, "config.metadata.name"},
		{"pod name with underscore", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "a_b" }), codes.InvalidArgument, "config.metadata.name"},
		{"empty namespace", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Namespace = "" }), codes.InvalidArgument, "config.metadata.namespace: is required"},
		{"long namespace", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Namespace = long(64) }), codes.InvalidArgument, "config.metadata.namespace: must be at most 63"},
		{"empty uid", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Uid = "" }), codes.InvalidArgument, "config.metadata.uid: is required"},
		{"uid with space", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Uid = "a b" }), codes.InvalidArgument, "config.metadata.uid"},
		{"attempt beyond int32", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Attempt = 1 << 31 }), codes.InvalidArgument, "config.metadata.attempt"},
		{"relative log directory", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "var/log/pods/x" }), codes.InvalidArgument, "config.log_directory"},
		{"unclean log directory", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "/var/log/pods/../../etc" }), codes.InvalidArgument, "config.log_directory"},
		{"host port out of range", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 70000}}
		}), codes.InvalidArgument, "config.port_mappings[0].host_port"},
		{"annotations over 320 KiB", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Annotations = map[string]string{"big": long(321 << 10)} }), codes.InvalidArgument, "config.annotations: total size"},
		{"empty label key", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Labels = map[string]string{"": "x"} }), codes.InvalidArgument, "config.labels: empty key"},
		{"long label key", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) { c.Labels = map[string]string{long(400): "x"} }), codes.InvalidArgument, "config.labels: key"},
		{"negative pod memory", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -5}
		}), codes.InvalidArgument, "config.linux.resources.memory_limit_in_bytes"},
		{"negative pod overhead shares", "RunPodSandbox", podWith(func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Overhead = &runtimeapi.LinuxContainerResources{CpuShares: -1}
		}), codes.InvalidArgument, "config.linux.overhead.cpu_shares"},

		// Container metadata, logs, privilege.
		{"no pod id", "CreateContainer", create("", critestContainer()), codes.InvalidArgument, "pod_sandbox_id: is required"},
		{"no container config", "CreateContainer", create("plain", nil), codes.InvalidArgument, "config: is required"},
		{"no container metadata", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Metadata = nil }), codes.InvalidArgument, "config.metadata: is required"},
		{"long container name", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Metadata.Name = long(254) }), codes.InvalidArgument, "config.metadata.name: must be at most 253 characters"},
		{"container name with slash", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Metadata.Name = "../x" }), codes.InvalidArgument, "config.metadata.name"},
		{"container attempt beyond int32", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Metadata.Attempt = 1<<32 - 1 }), codes.InvalidArgument, "config.metadata.attempt"},
		{"no image", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Image = nil }), codes.InvalidArgument, "config.image.image: is required"},
		{"absolute log path", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.LogPath = "/etc/passwd" }), codes.InvalidArgument, "config.log_path"},
		{"log path leaving the pod directory", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.LogPath = "../other-pod/0.log" }), codes.InvalidArgument, "config.log_path"},
		{"unclean log path", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.LogPath = "nginx/../../x.log" }), codes.InvalidArgument, "config.log_path"},
		{"log path without log directory", "CreateContainer", create("nolog", critestContainer()), codes.InvalidArgument, "config.log_path: is set but the pod log_directory is empty"},
		{"relative sandbox_config log directory", "CreateContainer", func(ctx context.Context, s *Server) (any, error) {
			return s.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: "plain", Config: critestContainer(), SandboxConfig: &runtimeapi.PodSandboxConfig{LogDirectory: "logs"}})
		}, codes.InvalidArgument, "sandbox_config.log_directory"},
		{"privileged container in unprivileged pod", "CreateContainer", create("plain", privileged(critestContainer())), codes.InvalidArgument, "config.linux.security_context.privileged"},
		{"unknown pod", "CreateContainer", create("missing", critestContainer()), codes.NotFound, "missing"},
		{"command with NUL", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Command = []string{"sh", "-c\x00"} }), codes.InvalidArgument, "config.command[1]"},
		{"args with NUL", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Args = []string{"\x00"} }), codes.InvalidArgument, "config.args[0]"},
		{"env without key", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Envs = []*runtimeapi.KeyValue{{Value: []byte("x")}} }), codes.InvalidArgument, "config.envs[0].key: is required"},
		{"env key with =", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) {
			c.Envs = []*runtimeapi.KeyValue{{Key: "A", Value: []byte("1")}, {Key: "B=C", Value: []byte("x")}}
		}), codes.InvalidArgument, "config.envs[1].key"},
		{"env value with NUL", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) {
			c.Envs = []*runtimeapi.KeyValue{{Key: "A", Value: []byte("1\x002")}}
		}), codes.InvalidArgument, "config.envs[0].value"},
		{"annotation with NUL", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Annotations = map[string]string{"a": "b\x00"} }), codes.InvalidArgument, "config.annotations"},

		// Resources, in CreateContainer and in both updates.
		{"negative cpu period", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Linux.Resources.CpuPeriod = -1 }), codes.InvalidArgument, "config.linux.resources.cpu_period"},
		{"absurd cpu quota", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Linux.Resources.CpuQuota = 1 << 62 }), codes.InvalidArgument, "config.linux.resources.cpu_quota"},
		{"negative cpu quota", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.CpuQuota = -2 })), codes.InvalidArgument, "linux.cpu_quota"},
		{"cpu shares over cgroup max", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.CpuShares = 1 << 20 })), codes.InvalidArgument, "linux.cpu_shares"},
		{"negative memory", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.MemoryLimitInBytes = -1 })), codes.InvalidArgument, "linux.memory_limit_in_bytes"},
		{"swap below memory", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) {
			r.MemoryLimitInBytes, r.MemorySwapLimitInBytes = 64<<20, 32<<20
		})), codes.InvalidArgument, "linux.memory_swap_limit_in_bytes"},
		{"swap below -1", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.MemorySwapLimitInBytes = -2 })), codes.InvalidArgument, "linux.memory_swap_limit_in_bytes"},
		{"oom score adj above 1000", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.OomScoreAdj = 1001 })), codes.InvalidArgument, "linux.oom_score_adj"},
		{"oom score adj below -1000", "CreateContainer", ctrWith(func(c *runtimeapi.ContainerConfig) { c.Linux.Resources.OomScoreAdj = -1001 }), codes.InvalidArgument, "config.linux.resources.oom_score_adj"},
		{"cpuset garbage", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.CpusetCpus = "0-a" })), codes.InvalidArgument, "linux.cpuset_cpus"},
		{"cpuset reversed range", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.CpusetCpus = "3-1" })), codes.InvalidArgument, "linux.cpuset_cpus"},
		{"cpuset huge index", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.CpusetMems = "0-4294967295" })), codes.InvalidArgument, "linux.cpuset_mems"},
		{"cpuset trailing comma", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.CpusetCpus = "0," })), codes.InvalidArgument, "linux.cpuset_cpus"},
		{"hugepage size garbage", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) {
			r.HugepageLimits = []*runtimeapi.HugepageLimit{{PageSize: "../2MB", Limit: 1}}
		})), codes.InvalidArgument, "linux.hugepage_limits[0].page_size"},
		{"hugepage size twice", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) {
			r.HugepageLimits = []*runtimeapi.HugepageLimit{{PageSize: "2MB"}, {PageSize: "2MB"}}
		})), codes.InvalidArgument, "linux.hugepage_limits[1].page_size"},
		{"unified key escaping the cgroup", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.Unified = map[string]string{"../../memory.max": "1"} })), codes.InvalidArgument, "linux.unified"},
		{"unified value with newline", "UpdateContainerResources", updateCtr(res(func(r *runtimeapi.LinuxContainerResources) { r.Unified = map[string]string{"memory.max": "1\n2"} })), codes.InvalidArgument, "linux.unified"},
		{"pod update negative quota", "UpdatePodSandboxResources", updatePod(res(func(r *runtimeapi.LinuxContainerResources) { r.CpuQuota = -7 })), codes.InvalidArgument, "resources.cpu_quota"},
		{"pod update overhead oom", "UpdatePodSandboxResources", func(ctx context.Context, s *Server) (any, error) {
			return s.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: "plain", Overhead: &runtimeapi.LinuxContainerResources{OomScoreAdj: 5000}})
		}, codes.InvalidArgument, "overhead.oom_score_adj"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pods := &fakePods{pods: map[string]sandbox.Pod{
				"plain": podRecord(t, "plain", plainPod),
				"priv":  podRecord(t, "priv", privPod),
				"nolog": podRecord(t, "nolog", noLogPod),
			}}
			s := newTestServer(&fakeImages{}, nil)
			s.pods = pods
			info := &grpc.UnaryServerInfo{FullMethod: "/runtime.v1.RuntimeService/" + tt.rpc}
			_, err := s.Instrument(context.Background(), nil, info, func(ctx context.Context, _ any) (any, error) {
				return tt.call(ctx, s)
			})
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Fatalf("code %v (%q), want %v", st.Code(), st.Message(), tt.code)
			}
			if !strings.Contains(st.Message(), tt.msg) {
				t.Fatalf("message %q does not name %q", st.Message(), tt.msg)
			}
			if len(st.Message()) > 1024 {
				t.Fatalf("message of %d bytes echoes the input", len(st.Message()))
			}
			// A refused request does no work.
			if tt.code != codes.OK && len(pods.calls) != 0 {
				t.Fatalf("refused request reached sandbox/: %v", pods.calls)
			}
		})
	}
}
