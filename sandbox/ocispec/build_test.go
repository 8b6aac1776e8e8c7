package ocispec

import (
	"errors"
	"reflect"
	"testing"

	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// input is a minimal valid request; tests change what they look at.
func input(t *testing.T) Input {
	t.Helper()
	return Input{
		ContainerID: "c1",
		SandboxID:   "p1",
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: "docker.io/library/busybox:latest"},
			Command:  []string{"sh"},
		},
		Sandbox: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: "uid-1"},
			Hostname: "pod-host",
		},
		Image:          &imgspecv1.ImageConfig{},
		RootfsPath:     "/run/cocoon/share/c1/rootfs",
		RootfsHostPath: t.TempDir(),
		CgroupsPath:    "/cocoon/c1",
	}
}

func mustBuild(t *testing.T, in Input) *specs.Spec {
	t.Helper()
	s, err := Build(in)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return s
}

func wantInvalid(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("want InvalidArgument, got %v", err)
	}
}

func TestArgs(t *testing.T) {
	img := &imgspecv1.ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"cmd", "x"}}
	for _, tc := range []struct {
		name          string
		img           *imgspecv1.ImageConfig
		command, args []string
		want          []string
	}{
		{"image only", img, nil, nil, []string{"/entry", "cmd", "x"}},
		{"args replace cmd", img, nil, []string{"a"}, []string{"/entry", "a"}},
		{"command drops image cmd", img, []string{"/bin/sh"}, nil, []string{"/bin/sh"}},
		{"command and args", img, []string{"/bin/sh"}, []string{"-c", "true"}, []string{"/bin/sh", "-c", "true"}},
		{"cmd without entrypoint", &imgspecv1.ImageConfig{Cmd: []string{"top"}}, nil, nil, []string{"top"}},
		{"args without entrypoint", &imgspecv1.ImageConfig{Cmd: []string{"top"}}, nil, []string{"ls"}, []string{"ls"}},
		{"nil image", nil, []string{"x"}, nil, []string{"x"}},
		{"nothing", &imgspecv1.ImageConfig{}, nil, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Image = tc.img
			in.Config.Command, in.Config.Args = tc.command, tc.args
			s, err := Build(in)
			if tc.want == nil {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.Process.Args, tc.want) {
				t.Fatalf("args %q, want %q", s.Process.Args, tc.want)
			}
		})
	}
}

func TestEnvAndCwd(t *testing.T) {
	for _, tc := range []struct {
		name     string
		imgEnv   []string
		envs     []*runtimeapi.KeyValue
		tty      bool
		imgDir   string
		dir      string
		wantEnv  []string
		wantCwd  string
		wantFail bool
	}{
		{name: "defaults", wantEnv: []string{defaultPath, "HOSTNAME=pod-host"}, wantCwd: "/"},
		{
			name:    "image then CRI, later wins in place",
			imgEnv:  []string{"PATH=/img", "A=1", "B=2"},
			envs:    []*runtimeapi.KeyValue{{Key: "B", Value: []byte("cri")}, {Key: "C", Value: []byte("3")}, {Key: "HOSTNAME", Value: []byte("h")}},
			wantEnv: []string{"PATH=/img", "HOSTNAME=h", "A=1", "B=cri", "C=3"},
			imgDir:  "/srv", wantCwd: "/srv",
		},
		{name: "tty", tty: true, wantEnv: []string{defaultPath, "HOSTNAME=pod-host", "TERM=xterm"}, wantCwd: "/"},
		{name: "config dir wins", imgDir: "/srv", dir: "/work/", wantEnv: []string{defaultPath, "HOSTNAME=pod-host"}, wantCwd: "/work"},
		{name: "relative dir", dir: "work", wantFail: true},
		{name: "image env without =", imgEnv: []string{"A=1", "BP2"}, wantFail: true},
		{name: "image env without name", imgEnv: []string{"=x"}, wantFail: true},
		{name: "image env with NUL", imgEnv: []string{"A=1\x002"}, wantFail: true},
		{name: "image env empty value", imgEnv: []string{"A="}, wantEnv: []string{defaultPath, "HOSTNAME=pod-host", "A="}, wantCwd: "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Image.Env, in.Image.WorkingDir = tc.imgEnv, tc.imgDir
			in.Config.Envs, in.Config.WorkingDir, in.Config.Tty = tc.envs, tc.dir, tc.tty
			s, err := Build(in)
			if tc.wantFail {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.Process.Env, tc.wantEnv) || s.Process.Cwd != tc.wantCwd || s.Process.Terminal != tc.tty {
				t.Fatalf("env %q cwd %q tty %v, want %q %q %v", s.Process.Env, s.Process.Cwd, s.Process.Terminal, tc.wantEnv, tc.wantCwd, tc.tty)
			}
		})
	}
}

func TestBuildBasics(t *testing.T) {
	s := mustBuild(t, input(t))
	if s.Hostname != "" {
		t.Errorf("hostname %q: containers use the VM's", s.Hostname)
	}
	if s.Root.Path != "/run/cocoon/share/c1/rootfs" || s.Root.Readonly || s.Linux.CgroupsPath != "/cocoon/c1" {
		t.Errorf("root %+v cgroups %q", s.Root, s.Linux.CgroupsPath)
	}
	if want := []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: NoFileLimit, Soft: NoFileLimit}}; !reflect.DeepEqual(s.Process.Rlimits, want) {
		t.Errorf("rlimits %+v", s.Process.Rlimits)
	}
	want := map[string]string{
		AnnotationContainerType: "container", AnnotationSandboxID: "p1", AnnotationContainerName: "app",
		AnnotationImageName: "docker.io/library/busybox:latest", AnnotationSandboxName: "pod",
		AnnotationSandboxNamespace: "ns", AnnotationSandboxUID: "uid-1",
	}
	if !reflect.DeepEqual(s.Annotations, want) {
		t.Errorf("annotations %v", s.Annotations)
	}
	if s.Process.OOMScoreAdj != nil || s.Linux.Sysctl != nil || s.Linux.Seccomp != nil || s.Process.ApparmorProfile != "" {
		t.Errorf("unexpected defaults: oom %v sysctl %v seccomp %v apparmor %q", s.Process.OOMScoreAdj, s.Linux.Sysctl, s.Linux.Seccomp, s.Process.ApparmorProfile)
	}

	in := input(t)
	in.Config.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ReadonlyRootfs: true, NoNewPrivs: true}}
	s = mustBuild(t, in)
	if !s.Root.Readonly || !s.Process.NoNewPrivileges {
		t.Errorf("readonly %v no_new_privs %v", s.Root.Readonly, s.Process.NoNewPrivileges)
	}
}

func TestBuildRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Input){
		"no id":           func(in *Input) { in.ContainerID = "" },
		"no config":       func(in *Input) { in.Config = nil },
		"relative rootfs": func(in *Input) { in.RootfsPath = "rootfs" },
		"unknown user":    func(in *Input) { in.Image.User = "nobody-here" },
		"unknown cap": func(in *Input) {
			in.Config.Linux = linuxSC(&runtimeapi.LinuxContainerSecurityContext{Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"FLY"}}})
		},
		"host network": func(in *Input) {
			in.Config.Linux = linuxSC(nsSC(&runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}))
		},
		"relative mount": func(in *Input) { in.Mounts = []Mount{{Source: "/x", Destination: "data"}} },
		"host device": func(in *Input) {
			in.Config.Devices = []*runtimeapi.Device{{HostPath: "/dev/nvidia0", ContainerPath: "/dev/nvidia0", Permissions: "rw"}}
		},
		"bad seccomp type": func(in *Input) {
			in.Config.Linux = linuxSC(&runtimeapi.LinuxContainerSecurityContext{Seccomp: &runtimeapi.SecurityProfile{ProfileType: 9}})
		},
	} {
		t.Run(name, func(t *testing.T) {
			in := input(t)
			mutate(&in)
			_, err := Build(in)
			wantInvalid(t, err)
		})
	}
}

func linuxSC(sc *runtimeapi.LinuxContainerSecurityContext) *runtimeapi.LinuxContainerConfig {
	return &runtimeapi.LinuxContainerConfig{SecurityContext: sc}
}

func nsSC(ns *runtimeapi.NamespaceOption) *runtimeapi.LinuxContainerSecurityContext {
	return &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: ns}
}

func TestNamespaces(t *testing.T) {
	const podNS = "/proc/42/ns/pid"
	for _, tc := range []struct {
		name    string
		opts    *runtimeapi.NamespaceOption
		podPID  string
		wantPID string
		fail    bool
	}{
		{name: "no options, no shared ns", wantPID: ""},
		{name: "container mode", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}, podPID: podNS, wantPID: ""},
		{name: "pod mode shares", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}, podPID: podNS, wantPID: podNS},
		{name: "pod mode without shared ns", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}, wantPID: ""},
		{name: "target", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: "c0"}, podPID: podNS, wantPID: podNS},
		{name: "target unknown", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET}, fail: true},
		{name: "host pid", opts: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE}, fail: true},
		{name: "host ipc", opts: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE}, fail: true},
		{name: "userns", opts: &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Uids: []*runtimeapi.IDMapping{{Length: 1}}}}, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Config.Linux = linuxSC(nsSC(tc.opts))
			in.PodPIDNamespace = tc.podPID
			s, err := Build(in)
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: tc.wantPID}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace}}
			if !reflect.DeepEqual(s.Linux.Namespaces, want) {
				t.Fatalf("namespaces %+v", s.Linux.Namespaces)
			}
		})
	}
}

func TestResources(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	deny := []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}
	for _, tc := range []struct {
		name    string
		r       *runtimeapi.LinuxContainerResources
		want    *specs.LinuxResources
		wantOOM *int
	}{
		{name: "none", want: &specs.LinuxResources{Devices: deny}},
		{
			name: "all",
			r: &runtimeapi.LinuxContainerResources{
				CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, CpusetCpus: "0-1", CpusetMems: "0",
				MemoryLimitInBytes: 64 << 20, OomScoreAdj: -997,
				HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 4 << 20}},
				Unified:        map[string]string{"memory.high": "50000000"},
			},
			want: &specs.LinuxResources{
				Devices:        deny,
				CPU:            &specs.LinuxCPU{Shares: u64(512), Quota: i64(50000), Period: u64(100000), Cpus: "0-1", Mems: "0"},
				Memory:         &specs.LinuxMemory{Limit: i64(64 << 20), Swap: i64(64 << 20)},
				HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 4 << 20}},
				Unified:        map[string]string{"memory.high": "50000000"},
			},
			wantOOM: func() *int { v := -997; return &v }(),
		},
		{
			name:    "swap asked for",
			r:       &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 100, MemorySwapLimitInBytes: 300, OomScoreAdj: 1000},
			want:    &specs.LinuxResources{Devices: deny, Memory: &specs.LinuxMemory{Limit: i64(100), Swap: i64(300)}},
			wantOOM: func() *int { v := 1000; return &v }(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Config.Linux = &runtimeapi.LinuxContainerConfig{Resources: tc.r}
			s := mustBuild(t, in)
			if !reflect.DeepEqual(s.Linux.Resources, tc.want) {
				t.Fatalf("resources\n got %+v\nwant %+v", s.Linux.Resources, tc.want)
			}
			if !reflect.DeepEqual(s.Process.OOMScoreAdj, tc.wantOOM) {
				t.Fatalf("oom score adj %v, want %v", s.Process.OOMScoreAdj, tc.wantOOM)
			}
			if s.Linux.Resources.Pids != nil {
				t.Fatal("pids limit set")
			}
		})
	}
}

func TestPodSysctls(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   map[string]string
		want map[string]string
		fail bool
	}{
		{name: "none"},
		{
			name: "namespaced",
			in:   map[string]string{"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1", "kernel.sem": "250 32000 32 128", "fs.mqueue.msg_max": "20", "kernel.msgmax": "9000"},
			want: map[string]string{"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1", "kernel.sem": "250 32000 32 128", "fs.mqueue.msg_max": "20", "kernel.msgmax": "9000"},
		},
		{name: "slashes", in: map[string]string{"net/ipv4/conf/eth0.1/rp_filter": "2"}, want: map[string]string{"net.ipv4.conf.eth0/1.rp_filter": "2"}},
		{name: "not namespaced", in: map[string]string{"vm.max_map_count": "262144"}, fail: true},
		{name: "kernel.semX is not kernel.sem", in: map[string]string{"kernel.semx": "1"}, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodSysctls(&runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{Sysctls: tc.in}})
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	// Build never puts them in the spec: libcontainer refuses them without
	// the container's own net/IPC namespace.
	in := input(t)
	in.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}}
	if s := mustBuild(t, in); len(s.Linux.Sysctl) != 0 {
		t.Fatalf("sysctls in spec: %v", s.Linux.Sysctl)
	}
}

func TestExecProcess(t *testing.T) {
	in := input(t)
	in.Image.Env = []string{"A=1"}
	in.Config.WorkingDir = "/srv"
	in.Config.Linux = &runtimeapi.LinuxContainerConfig{
		SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			RunAsUser: &runtimeapi.Int64Value{Value: 1000}, NoNewPrivs: true, SupplementalGroups: []int64{5},
			Capabilities: &runtimeapi.Capability{DropCapabilities: []string{"ALL"}, AddCapabilities: []string{"NET_ADMIN"}},
			Apparmor:     &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "my-prof"},
		},
	}
	base := mustBuild(t, in)
	for _, tty := range []bool{false, true} {
		p := ExecProcess(base, []string{"ls", "-l"}, tty)
		wantEnv := append([]string{}, base.Process.Env...)
		if tty {
			wantEnv = append(wantEnv, "TERM=xterm")
		}
		if !reflect.DeepEqual(p.Args, []string{"ls", "-l"}) || p.Terminal != tty || p.Cwd != "/srv" ||
			!reflect.DeepEqual(p.Env, wantEnv) || !reflect.DeepEqual(p.User, base.Process.User) ||
			!reflect.DeepEqual(p.Capabilities, base.Process.Capabilities) || !p.NoNewPrivileges ||
			p.ApparmorProfile != "my-prof" || !reflect.DeepEqual(p.Rlimits, base.Process.Rlimits) {
			t.Fatalf("tty=%v: exec process %+v", tty, p)
		}
		// A copy: changing the exec's process leaves the container's alone.
		p.User.AdditionalGids[0] = 99
		p.Capabilities.Bounding[0] = "X"
		if base.Process.User.AdditionalGids[0] == 99 || base.Process.Capabilities.Bounding[0] == "X" {
			t.Fatal("exec process aliases the base spec")
		}
	}
	// The container's own TERM is kept.
	base.Process.Env = append(base.Process.Env, "TERM=vt100")
	if p := ExecProcess(base, []string{"sh"}, true); p.Env[len(p.Env)-1] != "TERM=vt100" {
		t.Fatalf("env %q", p.Env)
	}
	if p := ExecProcess(nil, []string{"sh"}, false); p.Cwd != "/" || p.Args[0] != "sh" {
		t.Fatalf("nil base: %+v", p)
	}
}
