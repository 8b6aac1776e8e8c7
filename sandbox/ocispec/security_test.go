package ocispec

import (
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestProcPaths(t *testing.T) {
	for _, tc := range []struct {
		name         string
		sc           *runtimeapi.LinuxContainerSecurityContext
		wantMasked   []string
		wantReadonly []string
	}{
		{name: "defaults", wantMasked: DefaultMaskedPaths, wantReadonly: DefaultReadonlyPaths},
		{name: "explicit", sc: &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: []string{"/proc/x"}, ReadonlyPaths: []string{"/proc/y"}},
			wantMasked: []string{"/proc/x"}, wantReadonly: []string{"/proc/y"}},
		{name: "explicit empty", sc: &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: []string{}, ReadonlyPaths: []string{}},
			wantMasked: []string{}, wantReadonly: []string{}},
		{name: "only masked given", sc: &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: []string{}},
			wantMasked: []string{}, wantReadonly: DefaultReadonlyPaths},
		{name: "privileged", sc: &runtimeapi.LinuxContainerSecurityContext{Privileged: true, MaskedPaths: []string{"/proc/x"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Config.Linux = linuxSC(tc.sc)
			s := mustBuild(t, in)
			if !reflect.DeepEqual(s.Linux.MaskedPaths, tc.wantMasked) || !reflect.DeepEqual(s.Linux.ReadonlyPaths, tc.wantReadonly) {
				t.Fatalf("masked %q readonly %q", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
			}
		})
	}
}

func TestSeccomp(t *testing.T) {
	dir := t.TempDir()
	local := filepath.Join(dir, "profile.json")
	// Docker's format: archMap, includes/excludes.
	writeFile(t, local, `{
  "defaultAction": "SCMP_ACT_ERRNO",
  "archMap": [{"architecture": "`+string(nativeArchOrEmpty())+`", "subArchitectures": ["SCMP_ARCH_X86"]}],
  "syscalls": [
    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
    {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
    {"names": ["uname"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["`+runtime.GOARCH+`"]}},
    {"names": ["nope"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["no-such-arch"]}}
  ]
}`)
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, `{"syscalls": []}`)

	profile := func(pt runtimeapi.SecurityProfile_ProfileType, ref string) *runtimeapi.LinuxContainerSecurityContext {
		return &runtimeapi.LinuxContainerSecurityContext{Seccomp: &runtimeapi.SecurityProfile{ProfileType: pt, LocalhostRef: ref}}
	}
	for _, tc := range []struct {
		name string
		sc   *runtimeapi.LinuxContainerSecurityContext
		want string // "", "default", "local"
		fail bool
	}{
		{name: "nothing asked", want: ""},
		{name: "unconfined", sc: profile(runtimeapi.SecurityProfile_Unconfined, ""), want: ""},
		{name: "runtime default", sc: profile(runtimeapi.SecurityProfile_RuntimeDefault, ""), want: "default"},
		{name: "localhost", sc: profile(runtimeapi.SecurityProfile_Localhost, local), want: "local"},
		{name: "localhost prefixed", sc: profile(runtimeapi.SecurityProfile_Localhost, "localhost/"+local), want: "local"},
		{name: "localhost missing", sc: profile(runtimeapi.SecurityProfile_Localhost, filepath.Join(dir, "nope.json")), fail: true},
		{name: "localhost relative", sc: profile(runtimeapi.SecurityProfile_Localhost, "profile.json"), fail: true},
		{name: "localhost no default action", sc: profile(runtimeapi.SecurityProfile_Localhost, bad), fail: true},
		{name: "unknown type", sc: profile(7, ""), fail: true},
		{name: "privileged ignores", sc: &runtimeapi.LinuxContainerSecurityContext{Privileged: true, Seccomp: &runtimeapi.SecurityProfile{}}, want: ""},
		{name: "legacy default", sc: &runtimeapi.LinuxContainerSecurityContext{SeccompProfilePath: "runtime/default"}, want: "default"},
		{name: "legacy docker default", sc: &runtimeapi.LinuxContainerSecurityContext{SeccompProfilePath: "docker/default"}, want: "default"},
		{name: "legacy unconfined", sc: &runtimeapi.LinuxContainerSecurityContext{SeccompProfilePath: "unconfined"}, want: ""},
		{name: "legacy localhost", sc: &runtimeapi.LinuxContainerSecurityContext{SeccompProfilePath: "localhost/" + local}, want: "local"},
		{name: "legacy unknown", sc: &runtimeapi.LinuxContainerSecurityContext{SeccompProfilePath: "weird"}, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Config.Linux = linuxSC(tc.sc)
			s, err := Build(in)
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := s.Linux.Seccomp
			switch tc.want {
			case "":
				if got != nil {
					t.Fatalf("seccomp set: %+v", got.DefaultAction)
				}
			case "default":
				if got == nil || got.DefaultAction != specs.ActErrno || got.DefaultErrnoRet == nil || *got.DefaultErrnoRet != 1 {
					t.Fatalf("default profile: %+v", got)
				}
			case "local":
				var names []string
				for _, sc := range got.Syscalls {
					names = append(names, sc.Names...)
				}
				// Default caps hold CAP_CHOWN but not CAP_SYS_ADMIN.
				if !reflect.DeepEqual(names, []string{"read", "write", "uname"}) {
					t.Fatalf("local profile syscalls %v", names)
				}
				if len(nativeArches()) > 0 && !reflect.DeepEqual(got.Architectures, []specs.Arch{nativeArches()[0], specs.ArchX86}) {
					t.Fatalf("architectures %v", got.Architectures)
				}
			}
		})
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// nativeArches are the seccomp architectures of the guest (the host's): the
// native one first, then the ones its kernel also runs.
func nativeArches() []specs.Arch {
	switch runtime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	case "riscv64":
		return []specs.Arch{specs.ArchRISCV64}
	case "ppc64le":
		return []specs.Arch{specs.ArchPPC64LE}
	case "s390x":
		return []specs.Arch{specs.ArchS390X, specs.ArchS390}
	}
	return nil
}

func nativeArchOrEmpty() specs.Arch {
	if a := nativeArches(); len(a) > 0 {
		return a[0]
	}
	return ""
}

// allowed lists what a profile allows without argument conditions.
func allowed(s *specs.LinuxSeccomp) []string {
	var out []string
	for _, sc := range s.Syscalls {
		if sc.Action == specs.ActAllow && len(sc.Args) == 0 {
			out = append(out, sc.Names...)
		}
	}
	return out
}

func TestDefaultSeccomp(t *testing.T) {
	plain, err := DefaultSeccomp(ordered(DefaultCapabilities...))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := DefaultSeccomp(allCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"read", "execve", "futex", "epoll_wait", "chroot", "ptrace"} {
		if !slices.Contains(allowed(plain), name) {
			t.Errorf("default profile denies %s", name)
		}
	}
	for _, name := range []string{"mount", "unshare", "setns", "bpf", "reboot", "init_module", "keyctl", "io_uring_setup", "clone3"} {
		if slices.Contains(allowed(plain), name) {
			t.Errorf("default profile allows %s without the capability", name)
		}
	}
	for _, name := range []string{"mount", "unshare", "clone", "clone3", "reboot"} {
		if !slices.Contains(allowed(admin), name) {
			t.Errorf("profile for all caps denies %s", name)
		}
	}
	var clone3 *specs.LinuxSyscall
	for i, sc := range plain.Syscalls {
		if slices.Contains(sc.Names, "clone3") {
			clone3 = &plain.Syscalls[i]
		}
	}
	if clone3 == nil || clone3.Action != specs.ActErrno || *clone3.ErrnoRet != 38 {
		t.Fatalf("clone3 must fail with ENOSYS so libc falls back to clone: %+v", clone3)
	}
	t.Logf("default profile: %d syscalls allowed without condition", len(allowed(plain)))
}

func TestApparmor(t *testing.T) {
	for _, tc := range []struct {
		name string
		sc   *runtimeapi.LinuxContainerSecurityContext
		want string
		fail bool
	}{
		{name: "nothing"},
		{name: "runtime default", sc: &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}}},
		{name: "unconfined", sc: &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}}},
		{name: "localhost", sc: &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "localhost/k8s-deny"}}, want: "k8s-deny"},
		{name: "localhost empty", sc: &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost}}, fail: true},
		{name: "privileged", sc: &runtimeapi.LinuxContainerSecurityContext{Privileged: true, ApparmorProfile: "localhost/x"}},
		{name: "legacy localhost", sc: &runtimeapi.LinuxContainerSecurityContext{ApparmorProfile: "localhost/x"}, want: "x"},
		{name: "legacy default", sc: &runtimeapi.LinuxContainerSecurityContext{ApparmorProfile: "runtime/default"}},
		{name: "legacy unknown", sc: &runtimeapi.LinuxContainerSecurityContext{ApparmorProfile: "x"}, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t)
			in.Config.Linux = linuxSC(tc.sc)
			s, err := Build(in)
			if tc.fail {
				wantInvalid(t, err)
				return
			}
			if err != nil || s.Process.ApparmorProfile != tc.want {
				t.Fatalf("apparmor %q, %v; want %q", s.Process.ApparmorProfile, err, tc.want)
			}
		})
	}
}

func TestPrivileged(t *testing.T) {
	in := input(t)
	in.Config.Linux = linuxSC(&runtimeapi.LinuxContainerSecurityContext{Privileged: true})
	s := mustBuild(t, in)
	if !reflect.DeepEqual(s.Process.Capabilities.Bounding, allCapabilities) {
		t.Errorf("caps %v", s.Process.Capabilities.Bounding)
	}
	if want := []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}; !reflect.DeepEqual(s.Linux.Resources.Devices, want) {
		t.Errorf("devices %+v", s.Linux.Resources.Devices)
	}
	for _, m := range s.Mounts {
		if (m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup") && !slices.Contains(m.Options, "rw") {
			t.Errorf("%s options %v", m.Destination, m.Options)
		}
	}
	if s.Linux.Seccomp != nil || s.Process.ApparmorProfile != "" || s.Linux.MaskedPaths != nil || s.Linux.ReadonlyPaths != nil {
		t.Errorf("privileged still confined: %+v", s.Linux)
	}
}
