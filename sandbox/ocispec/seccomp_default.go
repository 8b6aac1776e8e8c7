package ocispec

import (
	"encoding/json"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// DefaultSeccomp builds the RuntimeDefault profile for a process holding caps
// (its bounding set): moby's default profile, the one Docker and containerd
// apply, with its capability, architecture and kernel-version conditions
// resolved by the library. It denies (EPERM) by default, refuses namespace
// flags to clone without CAP_SYS_ADMIN, answers clone3 with ENOSYS so libc
// falls back to the filtered clone, and refuses AF_VSOCK sockets (the guest's
// channel to the host).
//
// The library compares minKernel conditions with the kernel cocoond runs on,
// not the guest's; TestDefaultSeccompKernelConditions keeps every such
// condition at or below the oldest guest kernel, where the answer is the same.
func DefaultSeccomp(caps []string) (*specs.LinuxSeccomp, error) {
	s, err := seccomp.GetDefaultProfile(capSpec(caps))
	if err != nil {
		return nil, invalid("default seccomp profile: %v", err)
	}
	return s, nil
}

// capSpec is the part of a spec the seccomp library reads: the bounding set.
func capSpec(caps []string) *specs.Spec {
	return &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: caps}}}
}

// parseLocalProfile reads a profile in Docker's format (archMap,
// includes/excludes, "name"), the one most profiles on nodes use, or the
// plain OCI one, and resolves its conditions for caps.
func parseLocalProfile(path string, data []byte, caps []string) (*specs.LinuxSeccomp, error) {
	// The library reads a profile without defaultAction or syscalls as "no
	// seccomp"; a localhost profile that says nothing is a mistake, not a
	// request to run unconfined. A null rule would crash the library.
	var p seccomp.Seccomp
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, invalid("seccomp profile %s: %v", path, err)
	}
	if p.DefaultAction == "" {
		return nil, invalid("seccomp profile %s has no defaultAction", path)
	}
	for _, call := range p.Syscalls {
		if call == nil {
			return nil, invalid("seccomp profile %s has a null syscall rule", path)
		}
	}
	s, err := seccomp.LoadProfile(string(data), capSpec(caps))
	if err != nil {
		return nil, invalid("seccomp profile %s: %v", path, err)
	}
	return s, nil
}
