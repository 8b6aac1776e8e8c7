// Package ocispec turns a CRI container request into the OCI runtime spec the
// guest agent hands to libcontainer (runc's specconv with NoPivotRoot).
//
// It follows what kubelet expects from containerd's CRI plugin, adapted to a
// pod that is a VM: containers share the VM's network, UTS and IPC namespaces
// (so the spec never creates them and carries no hostname or sysctls), and
// everything is expressed in guest paths the caller already translated.
package ocispec

import (
	"fmt"
	"path/filepath"
	"strings"

	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// Mount is one caller-prepared mount, already in guest paths.
type Mount struct {
	Source      string // guest path
	Destination string // path inside the container
	ReadOnly    bool
	Propagation runtimeapi.MountPropagation
	Type        string // "bind" when empty
}

// Input is everything Build needs about one container.
type Input struct {
	ContainerID string
	SandboxID   string // only for the sandbox-id annotation; may be empty
	Config      *runtimeapi.ContainerConfig
	Sandbox     *runtimeapi.PodSandboxConfig
	Image       *imgspecv1.ImageConfig
	// RootfsPath is the guest path of the container's root filesystem.
	RootfsPath string
	// RootfsHostPath is the same rootfs on the host, read for /etc/passwd and /etc/group.
	RootfsHostPath string
	Mounts         []Mount
	CgroupsPath    string
	// PodPIDNamespace is the guest path of the pod's shared PID namespace
	// (/proc/<pid>/ns/pid), or "" when the pod does not share one.
	PodPIDNamespace string
	// Host, when set, makes the spec a host pod's (see HostPod).
	Host *HostPod
}

// HostPod is what a host pod's container spec needs besides a VM pod's. Its
// containers run on the host, so the spec names the namespaces a VM would
// have given: the pod's netns (none with hostNetwork), its IPC and UTS
// namespaces and shared PID namespace (the host-mode agent's, by
// placeholder; none where the pod shares the host's), and carries the pod's
// sysctls, which libcontainer sets in those namespaces.
type HostPod struct {
	// NetnsPath is the pod's network namespace; "" with hostNetwork.
	NetnsPath string
}

// CRI annotations containerd sets; tools that inspect the spec look for them.
const (
	AnnotationContainerType    = "io.kubernetes.cri.container-type"
	AnnotationSandboxID        = "io.kubernetes.cri.sandbox-id"
	AnnotationContainerName    = "io.kubernetes.cri.container-name"
	AnnotationImageName        = "io.kubernetes.cri.image-name"
	AnnotationSandboxName      = "io.kubernetes.cri.sandbox-name"
	AnnotationSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	AnnotationSandboxUID       = "io.kubernetes.cri.sandbox-uid"
	ContainerTypeContainer     = "container"
)

const (
	defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// NoFileLimit is RLIMIT_NOFILE (soft and hard) for every container. The
	// guest agent is PID 1 with the kernel's 1024:4096, which containers would
	// otherwise inherit; nodes running containerd have long given containers
	// 1048576 (containerd.service's LimitNOFILE), which is also nr_open's default.
	NoFileLimit = 1048576
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errdefs.ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// Build returns the OCI spec for in. Errors caused by the request wrap
// errdefs.ErrInvalidArgument.
func Build(in Input) (*specs.Spec, error) {
	cfg := in.Config
	switch {
	case in.ContainerID == "":
		return nil, invalid("container id is empty")
	case cfg == nil:
		return nil, invalid("container config is missing")
	case !filepath.IsAbs(in.RootfsPath):
		return nil, invalid("rootfs path %q is not absolute", in.RootfsPath)
	case len(cfg.GetDevices()) > 0 || len(cfg.GetCDIDevices()) > 0:
		// Host devices do not exist in the VM; starting without them would
		// hide the problem from the pod.
		return nil, invalid("host devices cannot be passed into a pod VM yet")
	}
	img := in.Image
	if img == nil {
		img = &imgspecv1.ImageConfig{}
	}
	sc := cfg.GetLinux().GetSecurityContext()
	psc := in.Sandbox.GetLinux().GetSecurityContext()
	privileged := sc.GetPrivileged()

	args, err := processArgs(cfg, img)
	if err != nil {
		return nil, err
	}
	cwd, err := workingDir(cfg, img)
	if err != nil {
		return nil, err
	}
	user, err := resolveUser(in.RootfsHostPath, sc, img.User, psc.GetSupplementalGroups(),
		psc.GetSupplementalGroupsPolicy() == runtimeapi.SupplementalGroupsPolicy_Strict)
	if err != nil {
		return nil, err
	}
	caps, err := capabilities(sc.GetCapabilities(), privileged)
	if err != nil {
		return nil, err
	}
	apparmor, err := apparmorProfile(sc, privileged)
	if err != nil {
		return nil, err
	}
	seccomp, err := seccompProfile(sc, caps.Bounding, privileged)
	if err != nil {
		return nil, err
	}
	mounts, rootPropagation, err := buildMounts(in.Mounts, privileged)
	if err != nil {
		return nil, err
	}
	var namespaces []specs.LinuxNamespace
	if in.Host != nil {
		namespaces, err = buildHostNamespaces(in.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions(), sc.GetNamespaceOptions(), in.Host)
	} else {
		namespaces, err = buildNamespaces(sc.GetNamespaceOptions(), in.PodPIDNamespace)
	}
	if err != nil {
		return nil, err
	}

	env, err := processEnv(cfg, img, sandboxHostname(in.Sandbox))
	if err != nil {
		return nil, err
	}

	s := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: in.RootfsPath, Readonly: sc.GetReadonlyRootfs()},
		Process: &specs.Process{
			Terminal:        cfg.GetTty(),
			User:            user,
			Args:            args,
			Env:             env,
			Cwd:             cwd,
			Capabilities:    caps,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: NoFileLimit, Soft: NoFileLimit}},
			NoNewPrivileges: sc.GetNoNewPrivs(),
			ApparmorProfile: apparmor,
		},
		Mounts:      mounts,
		Annotations: annotations(in),
		Linux: &specs.Linux{
			Namespaces:        namespaces,
			Resources:         buildResources(cfg.GetLinux().GetResources(), privileged),
			CgroupsPath:       in.CgroupsPath,
			RootfsPropagation: rootPropagation,
			Seccomp:           seccomp,
		},
	}
	if r := cfg.GetLinux().GetResources(); r != nil {
		adj := int(r.GetOomScoreAdj())
		s.Process.OOMScoreAdj = &adj
	}
	s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = procPaths(sc, privileged)
	if in.Host != nil {
		if s.Linux.Sysctl, err = PodSysctls(in.Sandbox); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// processArgs follows kubelet's rules: Command replaces the image
// Entrypoint, Args replace the image Cmd, and a Command without Args drops the
// image Cmd (it belonged to the replaced Entrypoint).
func processArgs(cfg *runtimeapi.ContainerConfig, img *imgspecv1.ImageConfig) ([]string, error) {
	entry, cmd := img.Entrypoint, img.Cmd
	if len(cfg.GetCommand()) > 0 {
		entry, cmd = cfg.GetCommand(), nil
	}
	if len(cfg.GetArgs()) > 0 {
		cmd = cfg.GetArgs()
	}
	args := append(append([]string{}, entry...), cmd...)
	if len(args) == 0 {
		return nil, invalid("no command: neither the container config nor the image gives one")
	}
	return args, nil
}

// processEnv layers defaults, the image's env, then the CRI envs; a later
// entry replaces an earlier one with the same key in place. It refuses an
// image entry libcontainer would refuse only at start (no '=', an empty name,
// a NUL), so CreateContainer names it instead of StartContainer failing.
func processEnv(cfg *runtimeapi.ContainerConfig, img *imgspecv1.ImageConfig, hostname string) ([]string, error) {
	var env []string
	index := map[string]int{}
	set := func(kv string) {
		key, _, _ := strings.Cut(kv, "=")
		if i, ok := index[key]; ok {
			env[i] = kv
			return
		}
		index[key] = len(env)
		env = append(env, kv)
	}
	set(defaultPath)
	if hostname != "" {
		// Docker and containerd both set it; scripts read $HOSTNAME.
		set("HOSTNAME=" + hostname)
	}
	if cfg.GetTty() {
		set("TERM=xterm")
	}
	for _, kv := range img.Env {
		key, _, ok := strings.Cut(kv, "=")
		if !ok || key == "" || strings.ContainsRune(kv, 0) {
			return nil, invalid("image env entry %q is not NAME=value", kv)
		}
		set(kv)
	}
	for _, kv := range cfg.GetEnvs() {
		// cri.Validate has refused bad names and values already.
		set(kv.GetKey() + "=" + string(kv.GetValue()))
	}
	return env, nil
}

// sandboxHostname is the name the guest was given (the pod name when the
// config has no hostname, as the sandbox setup does).
func sandboxHostname(sb *runtimeapi.PodSandboxConfig) string {
	if h := sb.GetHostname(); h != "" {
		return h
	}
	return sb.GetMetadata().GetName()
}

func workingDir(cfg *runtimeapi.ContainerConfig, img *imgspecv1.ImageConfig) (string, error) {
	dir := cfg.GetWorkingDir()
	if dir == "" {
		dir = img.WorkingDir
	}
	if dir == "" {
		return "/", nil
	}
	if !filepath.IsAbs(dir) {
		return "", invalid("working directory %q is not absolute", dir)
	}
	return filepath.Clean(dir), nil
}

func annotations(in Input) map[string]string {
	a := map[string]string{
		AnnotationContainerType: ContainerTypeContainer,
		AnnotationContainerName: in.Config.GetMetadata().GetName(),
	}
	image := in.Config.GetImage().GetUserSpecifiedImage()
	if image == "" {
		image = in.Config.GetImage().GetImage()
	}
	a[AnnotationImageName] = image
	if in.SandboxID != "" {
		a[AnnotationSandboxID] = in.SandboxID
	}
	if md := in.Sandbox.GetMetadata(); md != nil {
		a[AnnotationSandboxName] = md.GetName()
		a[AnnotationSandboxNamespace] = md.GetNamespace()
		a[AnnotationSandboxUID] = md.GetUid()
	}
	return a
}
