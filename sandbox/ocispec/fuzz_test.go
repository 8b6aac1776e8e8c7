package ocispec

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// FuzzBuild feeds Build CRI configs (protobuf wire bytes, as kubelet sends
// them), an image config (JSON, as stored), the image's /etc/passwd and a
// localhost seccomp profile. Build must not panic, must refuse only with
// ErrInvalidArgument, and a spec it returns must be one libcontainer can take.
func FuzzBuild(f *testing.F) {
	seedCtr := []*runtimeapi.ContainerConfig{
		{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Command: []string{"sh"}},
		{
			Metadata: &runtimeapi.ContainerMetadata{Name: "web", Attempt: 1}, Args: []string{"-g", "daemon off;"},
			WorkingDir: "/srv/../srv/www", Envs: []*runtimeapi.KeyValue{{Key: "A", Value: []byte("1")}, {Key: "PATH", Value: []byte("/bin")}}, Tty: true,
			Linux: &runtimeapi.LinuxContainerConfig{
				Resources: &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 64 << 20, OomScoreAdj: 999,
					HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 1 << 21}}, Unified: map[string]string{"memory.high": "1000000"}},
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					RunAsUser: &runtimeapi.Int64Value{Value: 1000}, RunAsGroup: &runtimeapi.Int64Value{Value: 1000}, SupplementalGroups: []int64{5, 6},
					Capabilities:   &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN", "cap_sys_time"}, DropCapabilities: []string{"ALL"}},
					ReadonlyRootfs: true, NoNewPrivs: true, MaskedPaths: []string{"/proc/kcore"}, ReadonlyPaths: []string{"/proc/sys"},
					Seccomp:  &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
					Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "localhost/p"},
				},
			},
		},
		{
			Metadata: &runtimeapi.ContainerMetadata{Name: "root"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				RunAsUsername: "www-data", Privileged: true,
				NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD},
				Capabilities:     &runtimeapi.Capability{AddCapabilities: []string{"ALL"}},
			}},
		},
		{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sec"}, Command: []string{"/bin/true"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "localhost/profile.json"},
			}},
		},
	}
	pod := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: "uid-1"}, Hostname: "pod-host",
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			SupplementalGroups: []int64{100}, SupplementalGroupsPolicy: runtimeapi.SupplementalGroupsPolicy_Strict,
		}},
	}
	podBytes, _ := proto.Marshal(pod)
	img, _ := json.Marshal(imgspecv1.ImageConfig{User: "www-data:staff", Entrypoint: []string{"/entry"}, Cmd: []string{"run"}, Env: []string{"A=0", "B=2"}, WorkingDir: "/app"})
	passwd := []byte("root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n")
	profile := []byte(`{"defaultAction":"SCMP_ACT_ERRNO","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],` +
		`"syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},{"name":"ptrace","action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_PTRACE"]}}]}`)
	for _, c := range seedCtr {
		b, _ := proto.Marshal(c)
		f.Add(b, podBytes, img, passwd, profile)
	}
	f.Add([]byte{}, []byte{}, []byte("{}"), []byte{}, []byte{})

	// Each fuzz worker is one process running iterations one after another,
	// so one directory per worker is enough.
	root := f.TempDir()
	rootfs := filepath.Join(root, "rootfs")
	profilePath := filepath.Join(root, "profile.json")
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, ctrBytes, podBytes, imgJSON, passwd, profile []byte) {
		var cfg runtimeapi.ContainerConfig
		var sb runtimeapi.PodSandboxConfig
		var ic imgspecv1.ImageConfig
		if proto.Unmarshal(ctrBytes, &cfg) != nil || proto.Unmarshal(podBytes, &sb) != nil || json.Unmarshal(imgJSON, &ic) != nil {
			return
		}
		// A localhost seccomp profile is a host path kubelet names: point it
		// at the fuzzed profile so the target reads only its own files.
		if sc := cfg.GetLinux().GetSecurityContext(); sc != nil {
			if sc.GetSeccomp().GetProfileType() == runtimeapi.SecurityProfile_Localhost {
				sc.Seccomp.LocalhostRef = profilePath
			}
			if strings.HasPrefix(sc.GetSeccompProfilePath(), "localhost/") {
				sc.SeccompProfilePath = "localhost/" + profilePath
			}
		}
		if err := os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), passwd, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(profilePath, profile, 0o644); err != nil {
			t.Fatal(err)
		}
		in := Input{
			ContainerID: "c1", SandboxID: "p1", Config: &cfg, Sandbox: &sb, Image: &ic,
			RootfsPath: "/run/cocoon/share/c1/rootfs", RootfsHostPath: rootfs, CgroupsPath: "/cocoon/c1",
		}
		s, err := Build(in)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error does not wrap ErrInvalidArgument: %v", err)
			}
			return
		}
		checkSpec(t, &cfg, s)
	})
}

// checkSpec asserts what the agent and libcontainer rely on in a built spec.
func checkSpec(t *testing.T, cfg *runtimeapi.ContainerConfig, s *specs.Spec) {
	t.Helper()
	if s.Root == nil || s.Root.Path != "/run/cocoon/share/c1/rootfs" || s.Process == nil || s.Linux == nil {
		t.Fatalf("spec lacks root, process or linux: %+v", s)
	}
	p := s.Process
	if len(p.Args) == 0 {
		t.Fatal("no args")
	}
	if !filepath.IsAbs(p.Cwd) || filepath.Clean(p.Cwd) != p.Cwd {
		t.Fatalf("cwd %q is not absolute and clean", p.Cwd)
	}
	keys := map[string]bool{}
	for _, kv := range p.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("env entry %q has no '='", kv)
		}
		if keys[k] {
			t.Fatalf("env key %q twice", k)
		}
		keys[k] = true
	}
	if p.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	for _, set := range [][]string{p.Capabilities.Bounding, p.Capabilities.Effective, p.Capabilities.Permitted, p.Capabilities.Inheritable, p.Capabilities.Ambient} {
		for _, c := range set {
			if !slices.Contains(allCapabilities, c) {
				t.Fatalf("unknown capability %q in spec", c)
			}
		}
	}
	// Parents are mounted before their children.
	for i, m := range s.Mounts {
		if !filepath.IsAbs(m.Destination) {
			t.Fatalf("mount destination %q is not absolute", m.Destination)
		}
		for _, later := range s.Mounts[i+1:] {
			if m.Destination != "/" && strings.HasPrefix(m.Destination, later.Destination+"/") {
				t.Fatalf("mount %s comes before its parent %s", m.Destination, later.Destination)
			}
		}
	}
	if r := cfg.GetLinux().GetResources(); r != nil {
		if p.OOMScoreAdj == nil || *p.OOMScoreAdj != int(r.GetOomScoreAdj()) {
			t.Fatalf("oom_score_adj %v, want %d", p.OOMScoreAdj, r.GetOomScoreAdj())
		}
	}
	if cfg.GetLinux().GetSecurityContext().GetPrivileged() && s.Linux.Seccomp != nil {
		t.Fatal("privileged container got a seccomp filter")
	}
	// The spec travels to the agent as JSON and must come back whole.
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var back specs.Spec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("spec does not decode: %v", err)
	}
	if !slices.Equal(back.Process.Args, p.Args) || back.Root.Path != s.Root.Path || len(back.Mounts) != len(s.Mounts) {
		t.Fatal("spec changed across JSON")
	}
}
