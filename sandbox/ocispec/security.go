package ocispec

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Defaults for /proc and /sys that containers must not see or write
// (containerd's lists).
var (
	DefaultMaskedPaths = []string{
		"/proc/acpi",
		"/proc/asound",
		"/proc/kcore",
		"/proc/keys",
		"/proc/latency_stats",
		"/proc/timer_list",
		"/proc/timer_stats",
		"/proc/sched_debug",
		"/proc/scsi",
		"/sys/firmware",
		"/sys/devices/virtual/powercap",
	}
	DefaultReadonlyPaths = []string{
		"/proc/bus",
		"/proc/fs",
		"/proc/irq",
		"/proc/sys",
		"/proc/sysrq-trigger",
	}
)

// procPaths: privileged containers get none; a security context that carries
// a list (kubelet sends one per procMount, possibly empty) gets exactly it.
// Over gRPC an empty list arrives as nil and so means the defaults, which is
// what containerd does too.
func procPaths(sc *runtimeapi.LinuxContainerSecurityContext, privileged bool) (masked, readonly []string) {
	if privileged {
		return nil, nil
	}
	masked, readonly = DefaultMaskedPaths, DefaultReadonlyPaths
	if sc.GetMaskedPaths() != nil {
		masked = sc.GetMaskedPaths()
	}
	if sc.GetReadonlyPaths() != nil {
		readonly = sc.GetReadonlyPaths()
	}
	return slices.Clone(masked), slices.Clone(readonly)
}

// seccompProfile picks the filter: none for privileged containers (as
// containerd), else the security profile, else the deprecated profile path;
// nothing requested means unconfined, kubelet's default.
func seccompProfile(sc *runtimeapi.LinuxContainerSecurityContext, caps []string, privileged bool) (*specs.LinuxSeccomp, error) {
	if privileged {
		return nil, nil
	}
	if p := sc.GetSeccomp(); p != nil {
		switch p.GetProfileType() {
		case runtimeapi.SecurityProfile_RuntimeDefault:
			return DefaultSeccomp(caps)
		case runtimeapi.SecurityProfile_Unconfined:
			return nil, nil
		case runtimeapi.SecurityProfile_Localhost:
			return loadSeccomp(strings.TrimPrefix(p.GetLocalhostRef(), "localhost/"), caps)
		default:
			return nil, invalid("unknown seccomp profile type %v", p.GetProfileType())
		}
	}
	switch path := sc.GetSeccompProfilePath(); {
	case path == "" || path == "unconfined":
		return nil, nil
	case path == "runtime/default" || path == "docker/default":
		return DefaultSeccomp(caps)
	case strings.HasPrefix(path, "localhost/"):
		return loadSeccomp(strings.TrimPrefix(path, "localhost/"), caps)
	default:
		return nil, invalid("unknown seccomp profile %q", path)
	}
}

// apparmorProfile returns the profile name for the process. RuntimeDefault
// means "whatever the runtime applies by default", and the guest has no
// AppArmor, so it is no profile (containerd on hosts without AppArmor does
// the same). A Localhost profile is set as asked; the guest cannot load it,
// so such a container fails to start rather than run unconfined.
func apparmorProfile(sc *runtimeapi.LinuxContainerSecurityContext, privileged bool) (string, error) {
	if privileged {
		return "", nil
	}
	if p := sc.GetApparmor(); p != nil {
		switch p.GetProfileType() {
		case runtimeapi.SecurityProfile_RuntimeDefault, runtimeapi.SecurityProfile_Unconfined:
			return "", nil
		case runtimeapi.SecurityProfile_Localhost:
			name := strings.TrimPrefix(p.GetLocalhostRef(), "localhost/")
			if name == "" {
				return "", invalid("localhost AppArmor profile without a name")
			}
			return name, nil
		default:
			return "", invalid("unknown AppArmor profile type %v", p.GetProfileType())
		}
	}
	switch prof := sc.GetApparmorProfile(); {
	case prof == "" || prof == "runtime/default" || prof == "unconfined":
		return "", nil
	case strings.HasPrefix(prof, "localhost/") && len(prof) > len("localhost/"):
		return strings.TrimPrefix(prof, "localhost/"), nil
	default:
		return "", invalid("unknown AppArmor profile %q", prof)
	}
}

// loadSeccomp reads a profile from the host path kubelet gives.
func loadSeccomp(path string, caps []string) (*specs.LinuxSeccomp, error) {
	if path == "" || !strings.HasPrefix(path, "/") {
		return nil, invalid("localhost seccomp profile %q is not an absolute path", path)
	}
	data, err := readProfile(path)
	if err != nil {
		return nil, invalid("seccomp profile: %v", err)
	}
	return parseLocalProfile(path, data, caps)
}

// maxProfileSize bounds a localhost seccomp profile: real ones are tens of
// KiB, and the path comes from the request.
const maxProfileSize = 4 << 20

// readProfile reads a regular file of at most maxProfileSize bytes, never
// blocking on a FIFO or reading a device without end.
func readProfile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > maxProfileSize {
		return nil, fmt.Errorf("%s is %d bytes, more than %d", path, st.Size(), maxProfileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxProfileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxProfileSize {
		return nil, fmt.Errorf("%s grew past %d bytes", path, maxProfileSize)
	}
	return data, nil
}
