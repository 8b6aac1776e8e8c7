package ocispec

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// allowsSocket reports whether a profile lets socket(family, ...) through.
func allowsSocket(s *specs.LinuxSeccomp, family uint64) bool {
	for _, r := range s.Syscalls {
		if r.Action != specs.ActAllow || !slices.Contains(r.Names, "socket") {
			continue
		}
		match := true
		for _, a := range r.Args {
			if a.Index != 0 {
				continue
			}
			switch a.Op {
			case specs.OpEqualTo:
				match = match && family == a.Value
			case specs.OpNotEqual:
				match = match && family != a.Value
			case specs.OpLessThan:
				match = match && family < a.Value
			default:
				match = false
			}
		}
		if match {
			return true
		}
	}
	return false
}

// The guest's vsock is the channel to the host: no container may open one,
// whatever its capabilities; ordinary families stay usable.
func TestDefaultSeccompRefusesVsock(t *testing.T) {
	t.Parallel()
	const afUnix, afInet, afInet6, afNetlink, afVsock = 1, 2, 10, 16, 40
	for _, caps := range [][]string{ordered(DefaultCapabilities...), allCapabilities} {
		s, err := DefaultSeccomp(caps)
		if err != nil {
			t.Fatal(err)
		}
		if allowsSocket(s, afVsock) {
			t.Errorf("%d caps: AF_VSOCK sockets allowed", len(caps))
		}
		for _, f := range []uint64{afUnix, afInet, afInet6, afNetlink} {
			if !allowsSocket(s, f) {
				t.Errorf("%d caps: socket family %d refused", len(caps), f)
			}
		}
	}
}

// What critest's seccomp specs run under RuntimeDefault without
// CAP_SYS_ADMIN must fail; with it, it must work.
func TestDefaultSeccompNamespaceAndHostname(t *testing.T) {
	t.Parallel()
	plain, err := DefaultSeccomp(ordered(DefaultCapabilities...))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := DefaultSeccomp(ordered(append(slices.Clone(DefaultCapabilities), "CAP_SYS_ADMIN")...))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sethostname", "setdomainname", "unshare", "setns", "mount"} {
		if slices.Contains(allowed(plain), name) {
			t.Errorf("%s allowed without CAP_SYS_ADMIN", name)
		}
		if !slices.Contains(allowed(admin), name) {
			t.Errorf("%s refused with CAP_SYS_ADMIN", name)
		}
	}
}

// The library checks a rule's minKernel against the kernel cocoond runs on,
// but containers run on the guest kernel (6.1 as shipped). A condition at or
// below 5.10, older than any host or guest we support, gets the same answer
// on both; a newer one in a library update would need handling here.
func TestDefaultSeccompKernelConditions(t *testing.T) {
	t.Parallel()
	limit := seccomp.KernelVersion{Kernel: 5, Major: 10}
	for _, r := range seccomp.DefaultProfile().Syscalls {
		for _, f := range []*seccomp.Filter{r.Includes, r.Excludes} {
			if f == nil || f.MinKernel == nil {
				continue
			}
			if k := *f.MinKernel; k.Kernel > limit.Kernel || (k.Kernel == limit.Kernel && k.Major > limit.Major) {
				t.Errorf("rule %v depends on kernel %s, newer than %s: host and guest may disagree", r.Names, k.String(), limit.String())
			}
		}
	}
}

// A localhost profile that says nothing, or holds a null rule, is refused
// rather than run unconfined or crash the daemon.
func TestLocalhostSeccompMalformed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"empty":      `{}`,
		"null rule":  `{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[null]}`,
		"name+names": `{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"name":"read","names":["write"],"action":"SCMP_ACT_ALLOW"}]}`,
		"bad kernel": `{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"x"}}]}`,
		"not json":   `{"defaultAction":`,
		"arch clash": `{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}`,
	} {
		path := filepath.Join(dir, filepath.Base(name)+".json")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadSeccomp(path, nil)
		wantInvalid(t, err)
	}
}
