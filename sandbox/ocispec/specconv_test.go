//go:build linux

package ocispec

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/configs/validate"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// convert does what the agent does with a spec: JSON round trip, then
// specconv with NoPivotRoot; it also runs libcontainer's validator, which
// libcontainer.Create applies next.
func convert(t *testing.T, s *specs.Spec) (*configs.Config, error) {
	t.Helper()
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: "c1", NoPivotRoot: true, Spec: &spec})
	if err != nil {
		return nil, err
	}
	return cfg, validate.Validate(cfg)
}

// specInput is a realistic request: a rootfs that exists (the validator
// checks), volumes, resources, and a shared PID namespace.
func specInput(t *testing.T, sc *runtimeapi.LinuxContainerSecurityContext) Input {
	in := input(t)
	rootfs, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	in.RootfsPath = rootfs
	in.Config.Linux = &runtimeapi.LinuxContainerConfig{
		SecurityContext: sc,
		Resources: &runtimeapi.LinuxContainerResources{
			CpuShares: 256, CpuQuota: 20000, CpuPeriod: 100000, MemoryLimitInBytes: 128 << 20, OomScoreAdj: 500,
		},
	}
	in.Mounts = []Mount{
		{Source: "/run/cocoon/share/c1/mounts/0", Destination: "/etc/hosts", ReadOnly: true},
		{Source: "/run/cocoon/share/c1/mounts/1", Destination: "/data", Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER},
	}
	in.PodPIDNamespace = "/proc/self/ns/pid"
	return in
}

func TestSpecconvAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		sc   *runtimeapi.LinuxContainerSecurityContext
	}{
		{"plain", &runtimeapi.LinuxContainerSecurityContext{
			RunAsUser: &runtimeapi.Int64Value{Value: 1000}, NoNewPrivs: true, ReadonlyRootfs: true,
			Capabilities:     &runtimeapi.Capability{DropCapabilities: []string{"NET_RAW"}},
			Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD},
		}},
		{"privileged", &runtimeapi.LinuxContainerSecurityContext{
			Privileged:       true,
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustBuild(t, specInput(t, tc.sc))
			cfg, err := convert(t, s)
			if err != nil {
				t.Fatalf("libcontainer refuses the spec: %v", err)
			}
			if cfg.Namespaces.Contains(configs.NEWNET) || cfg.Namespaces.Contains(configs.NEWUTS) || cfg.Namespaces.Contains(configs.NEWIPC) {
				t.Fatalf("container gets its own net/uts/ipc: %+v", cfg.Namespaces)
			}
			if !cfg.Namespaces.Contains(configs.NEWNS) || !cfg.Namespaces.Contains(configs.NEWPID) {
				t.Fatalf("namespaces %+v", cfg.Namespaces)
			}
			if tc.sc.Privileged != (cfg.Seccomp == nil) {
				t.Fatalf("seccomp %v for privileged=%v", cfg.Seccomp != nil, tc.sc.Privileged)
			}
			if !cfg.NoPivotRoot || cfg.Cgroups.Resources.Memory != 128<<20 {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}

// The reason Build leaves pod sysctls to the sandbox: libcontainer refuses
// them for a container that shares the VM's network namespace.
func TestSpecconvRefusesContainerSysctls(t *testing.T) {
	s := mustBuild(t, specInput(t, nil))
	s.Linux.Sysctl = map[string]string{"net.ipv4.ip_forward": "1"}
	if _, err := convert(t, s); err == nil || !strings.Contains(err.Error(), "sysctl") {
		t.Fatalf("want a sysctl error, got %v", err)
	}
}
