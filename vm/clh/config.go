package clh

import (
	"fmt"
	"path/filepath"
	"strings"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
	"github.com/cocoon-runtime/cocoon/vm"
)

// Files in a VM's run directory.
const (
	apiSocketName   = "api.sock"
	vsockSocketName = "vsock.sock"
)

const (
	// agentPort is where cocoon-agent listens (agent.VsockPort; not imported
	// to keep the guest's dependencies out of the driver).
	agentPort = 1024
	// guestCID: with hybrid vsock the CID only names the guest inside its own
	// VM (the host end is a unix socket), so every VM can use the first
	// guest CID.
	guestCID = 3
	// sunPathMax is the longest unix socket path bind accepts (108 with NUL).
	sunPathMax = 107
	mib        = 1 << 20
)

// baseCmdline: the serial console goes to console.log. CH has no
// -no-reboot, so a panicking guest reboots inside the same VMM; panic=1
// leaves a second for the console to flush first.
const baseCmdline = "console=ttyS0 quiet panic=1 " + vm.FastBootKernelArgs

func apiSocket(runDir string) string     { return filepath.Join(runDir, apiSocketName) }
func vsockSocket(runDir string) string   { return filepath.Join(runDir, vsockSocketName) }
func fsSocket(runDir, tag string) string { return vm.VirtiofsSocket(runDir, tag) }

// validate rejects specs this driver cannot run, before anything starts.
func validate(spec *vm.Spec) error {
	switch {
	case spec.ID == "":
		return fmt.Errorf("clh: spec has no ID")
	case spec.RunDir == "" || !filepath.IsAbs(spec.RunDir):
		return fmt.Errorf("clh: run dir %q must be an absolute path", spec.RunDir)
	case spec.Kernel == "":
		return fmt.Errorf("clh: spec has no kernel")
	case spec.VCPUs == 0:
		return fmt.Errorf("clh: spec needs at least one vCPU")
	case spec.MaxVCPUs != 0 && spec.MaxVCPUs < spec.VCPUs:
		return fmt.Errorf("clh: max vCPUs %d below vCPUs %d", spec.MaxVCPUs, spec.VCPUs)
	case spec.MemoryMiB == 0:
		return fmt.Errorf("clh: spec has no memory")
	case spec.MaxMemoryMiB != 0 && spec.MaxMemoryMiB < spec.MemoryMiB:
		return fmt.Errorf("clh: max memory %d MiB below memory %d MiB", spec.MaxMemoryMiB, spec.MemoryMiB)
	case spec.Accel == "tcg":
		return fmt.Errorf("clh: cloud-hypervisor cannot emulate (accel tcg); it needs kvm")
	}
	// Every socket path must fit in sun_path; the vsock one gets "_<port>"
	// appended by CH for guest-initiated connections.
	longest := vsockSocket(spec.RunDir) + fmt.Sprintf("_%d", agentPort)
	for _, sh := range spec.Shares {
		if sh.Tag == "" || filepath.Base(sh.Tag) != sh.Tag || strings.ContainsAny(sh.Tag, " ,=") {
			return fmt.Errorf("clh: share tag %q is not a plain name", sh.Tag)
		}
		if p := fsSocket(spec.RunDir, sh.Tag); len(p) > len(longest) {
			longest = p
		}
	}
	if len(longest) > sunPathMax {
		return fmt.Errorf("clh: run dir %s is too long for unix socket paths (%s is %d bytes, max %d)",
			spec.RunDir, longest, len(longest), sunPathMax)
	}
	seen := map[string]bool{}
	for _, n := range spec.NICs {
		if err := validNIC(n); err != nil {
			return err
		}
		if seen[n.ID] {
			return fmt.Errorf("clh: device id %q used twice", n.ID)
		}
		seen[n.ID] = true
	}
	for _, d := range spec.Disks {
		if d.ID == "" || d.Path == "" {
			return fmt.Errorf("clh: disk needs an id and a path (got %q, %q)", d.ID, d.Path)
		}
		if seen[d.ID] {
			return fmt.Errorf("clh: device id %q used twice", d.ID)
		}
		seen[d.ID] = true
	}
	return nil
}

func validNIC(n vm.NIC) error {
	if n.ID == "" || n.Tap == nil {
		return fmt.Errorf("clh: NIC needs an id and an open tap (id %q)", n.ID)
	}
	return nil
}

// cmdline is the driver's kernel command line followed by the spec's.
func cmdline(spec *vm.Spec) string {
	args := []string{baseCmdline}
	if spec.MaxMemoryMiB > spec.MemoryMiB {
		// Hot-added memory is useless until onlined; no udev does it here.
		args = append(args, "memhp_default_state=online")
	}
	return strings.Join(append(args, spec.KernelArgs...), " ")
}

// vmConfig is the VmConfig for vm.create. NICs are not in it: their tap fds
// can only travel with vm.add-net.
func vmConfig(spec *vm.Spec) clhapi.VmConfig {
	maxVCPUs := spec.MaxVCPUs
	if maxVCPUs == 0 {
		maxVCPUs = spec.VCPUs
	}
	mem := clhapi.MemoryConfig{Size: int64(spec.MemoryMiB) * mib}
	if spec.MaxMemoryMiB > spec.MemoryMiB {
		mem.HotplugSize = ptr(int64(spec.MaxMemoryMiB-spec.MemoryMiB) * mib)
	}
	if len(spec.Shares) > 0 {
		// vhost-user (virtiofsd) maps guest memory: it must be shared.
		mem.Shared = ptr(true)
	}
	cfg := clhapi.VmConfig{
		Payload: clhapi.PayloadConfig{Kernel: ptr(spec.Kernel), Cmdline: ptr(cmdline(spec))},
		Cpus:    &clhapi.CpusConfig{BootVcpus: int(spec.VCPUs), MaxVcpus: int(maxVCPUs)},
		Memory:  &mem,
		Rng:     &clhapi.RngConfig{Src: "/dev/urandom"},
		// We are a daemon: never Tty. Serial (ttyS0) to the console FIFO,
		// which cocoond copies into a capped console.log; no virtio-console.
		Serial:  &clhapi.ConsoleConfig{Mode: clhapi.File, File: ptr(vm.ConsolePipe(spec.RunDir))},
		Console: &clhapi.ConsoleConfig{Mode: clhapi.Off},
		Vsock:   &clhapi.VsockConfig{Cid: guestCID, Socket: vsockSocket(spec.RunDir)},
	}
	if spec.Initramfs != "" {
		cfg.Payload.Initramfs = ptr(spec.Initramfs)
	}
	if len(spec.Disks) > 0 {
		disks := make([]clhapi.DiskConfig, 0, len(spec.Disks))
		for _, d := range spec.Disks {
			disks = append(disks, diskConfig(d))
		}
		cfg.Disks = &disks
	}
	if len(spec.Shares) > 0 {
		fs := make([]clhapi.FsConfig, 0, len(spec.Shares))
		for _, sh := range spec.Shares {
			fs = append(fs, clhapi.FsConfig{
				Tag: sh.Tag, Socket: fsSocket(spec.RunDir, sh.Tag),
				NumQueues: 1, QueueSize: 1024, Id: ptr("fs-" + sh.Tag),
			})
		}
		cfg.Fs = &fs
	}
	return cfg
}

func diskConfig(d vm.Disk) clhapi.DiskConfig {
	// Say Raw: since v51 CH refuses guest writes to sector zero of images
	// whose format it had to guess.
	return clhapi.DiskConfig{Id: ptr(d.ID), Path: ptr(d.Path), Readonly: ptr(d.ReadOnly), ImageType: ptr(clhapi.Raw)}
}

func netConfig(n vm.NIC) clhapi.NetConfig {
	// Two queues: one queue pair, so CH takes exactly one tap fd.
	c := clhapi.NetConfig{Id: ptr(n.ID), NumQueues: ptr(2)}
	if len(n.MAC) > 0 {
		c.Mac = ptr(n.MAC.String())
	}
	if n.MTU > 0 {
		c.Mtu = ptr(n.MTU)
	}
	return c
}

func ptr[T any](v T) *T { return &v }
