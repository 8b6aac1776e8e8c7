package qemu

import (
	"fmt"
	"path/filepath"
	"strings"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

const (
	// hotplugPorts are PCIe root ports created at boot: q35 can only hotplug
	// devices into a port that already exists.
	hotplugPorts = 4
	// fdBase is the first fd QEMU sees in ExtraFiles (0-2 are stdio).
	fdBase = 3
	// baseCmdline: serial console for the log, no reboot on panic, hotplugged
	// memory onlined by the kernel itself. swiotlb=noforce: the guest would
	// otherwise set aside (and zero, so the host backs it) a 64 MiB bounce
	// buffer because hotplug memory reaches above 4 GiB; virtio devices
	// without VIRTIO_F_ACCESS_PLATFORM never bounce.
	baseCmdline = "console=ttyS0 panic=-1 reboot=k memhp_default_state=online swiotlb=noforce quiet " + vm.FastBootKernelArgs
	// tcgTBSizeMiB caps TCG's translation cache (QEMU 7.2 reserves 1 GiB and
	// backs each region it fills with huge pages: about 76 MiB resident per
	// idle pod). 32 MiB boots as fast as the default here; 16 MiB cost about
	// 0.2 s and 8 MiB 2 s of retranslation per boot.
	tcgTBSizeMiB = 32
	// balloonDevice returns the guest's freed pages to the host (free page
	// reporting: QEMU punches them out of the memfd), and lets the guest take
	// back pages from the balloon before its OOM killer runs.
	balloonDevice = "virtio-balloon-pci,id=balloon0,free-page-reporting=on,deflate-on-oom=on"
	// sandboxArg turns on QEMU's seccomp filter: no obsolete syscalls, no
	// setuid/setgid, no fork/exec, no affinity or priority changes.
	sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
)

// confinedCommand is how QEMU is started: setpriv (util-linux) empties the
// capability bounding, inheritable and ambient sets and sets no_new_privs,
// then execs QEMU in place (same pid and start time, so adoption still
// works). os/exec cannot drop the bounding set between fork and exec. QEMU
// needs no capability: its taps come as fds, its RAM is a memfd it creates,
// and every file it opens (run dir, /dev/kvm, /dev/vhost-vsock) is root's.
func confinedCommand(setpriv, qemu string, args []string) []string {
	return append([]string{setpriv, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--", qemu}, args...)
}

// paths are the files of one VM in its run dir.
type paths struct {
	qmp, agent, console string
}

func vmPaths(runDir string) paths {
	return paths{
		qmp:     filepath.Join(runDir, "qmp.sock"),
		agent:   filepath.Join(runDir, "agent.sock"),
		console: vm.ConsolePipe(runDir), // a FIFO cocoond copies into a capped console.log
	}
}

// ConfinementProbe is a QEMU run confined as the driver confines it (setpriv,
// then the seccomp sandbox) that only lists devices and exits: `cocoon check`
// runs it to prove the host can confine QEMU.
func ConfinementProbe(setpriv, qemu string) []string {
	return confinedCommand(setpriv, qemu, []string{"-sandbox", sandboxArg, "-machine", "none", "-device", "help"})
}

// commandLine builds QEMU's arguments. NIC taps are ExtraFiles starting at
// fdBase in spec order; vfsSockets[i] serves spec.Shares[i]. tokenFile, when
// set, is the agent token QEMU hands the guest through fw_cfg.
// debugConsole lets the agent accept guest-root execs.
func commandLine(spec *vm.Spec, accel string, vfsSockets []string, vsockCID uint32, tokenFile string, debugConsole bool) []string {
	p := vmPaths(spec.RunDir)
	maxCPUs := max(spec.MaxVCPUs, spec.VCPUs)
	maxMem := max(spec.MaxMemoryMiB, spec.MemoryMiB)
	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	mem := fmt.Sprintf("%dM", spec.MemoryMiB)
	if maxMem > spec.MemoryMiB {
		mem += fmt.Sprintf(",slots=8,maxmem=%dM", maxMem)
	}
	args := []string{
		"-name", "cocoon-" + spec.ID + ",debug-threads=on",
		"-machine", "q35,memory-backend=mem",
		"-accel", accelArg(accel),
		"-cpu", cpu,
		"-smp", fmt.Sprintf("%d,maxcpus=%d", spec.VCPUs, maxCPUs),
		"-m", mem,
		// Shared memory so vhost-user-fs (virtiofsd) can map guest RAM.
		"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", spec.MemoryMiB),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-S", // Start (QMP cont) runs the guest
		"-kernel", spec.Kernel, "-initrd", spec.Initramfs,
		"-append", kernelCmdline(spec, tokenFile, debugConsole),
		"-serial", "file:" + p.console,
		"-qmp", "unix:" + p.qmp + ",server=on,wait=off",
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
		"-device", balloonDevice,
		"-sandbox", sandboxArg,
	}
	if tokenFile != "" {
		// QEMU reads the file at start-up; only the path is on its command line.
		args = append(args, "-fw_cfg", "name="+agentapi.FwCfgTokenName+",file="+tokenFile)
	}
	if vsockCID != 0 {
		args = append(args, "-device", fmt.Sprintf("vhost-vsock-pci,id=vsock0,guest-cid=%d", vsockCID))
	} else {
		args = append(args,
			"-device", "virtio-serial-pci,id=serial0",
			"-chardev", "socket,id=agent,path="+p.agent+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name=cocoon.agent")
	}
	for i := range hotplugPorts {
		args = append(args, "-device", fmt.Sprintf("pcie-root-port,id=hp%d,chassis=%d,slot=%d", i, i+1, i+1))
	}
	for i, sh := range spec.Shares {
		id := fmt.Sprintf("vfs%d", i)
		args = append(args,
			"-chardev", "socket,id="+id+",path="+vfsSockets[i],
			"-device", "vhost-user-fs-pci,chardev="+id+",tag="+sh.Tag+",queue-size=1024")
	}
	for i, nic := range spec.NICs {
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=%s,fd=%d", nic.ID, fdBase+i),
			"-device", nicDevice(nic))
	}
	for _, d := range spec.Disks {
		args = append(args, "-blockdev", blockdevArg(d), "-device", "virtio-blk-pci,id="+d.ID+",drive="+d.ID+"-node")
	}
	return args
}

// accelArg is -accel's value: TCG with its translation cache sized for a
// small guest; any other accelerator (kvm) as named, since tb-size is TCG's.
func accelArg(accel string) string {
	if accel == "tcg" {
		return fmt.Sprintf("tcg,tb-size=%d", tcgTBSizeMiB)
	}
	return accel
}

// kernelCmdline is the driver's command line, the spec's arguments, then the
// agent's policy last, so no configured argument can override it.
func kernelCmdline(spec *vm.Spec, tokenFile string, debugConsole bool) string {
	source := agentapi.TokenSourceNone
	if tokenFile != "" {
		source = agentapi.TokenSourceFwCfg
	}
	parts := append([]string{baseCmdline}, spec.KernelArgs...)
	return strings.Join(append(parts, vm.AgentPolicyArgs(source, debugConsole)...), " ")
}

// nicDevice is a virtio-net NIC without an option ROM: the guest boots from
// -kernel, and SeaBIOS initialising iPXE only costs boot time.
func nicDevice(nic vm.NIC) string {
	s := "virtio-net-pci,id=" + nic.ID + "-dev,netdev=" + nic.ID + ",mac=" + nic.MAC.String() + ",romfile="
	if nic.MTU > 0 {
		s += fmt.Sprintf(",host_mtu=%d", nic.MTU)
	}
	return s
}

func blockdevArg(d vm.Disk) string {
	s := "driver=raw,node-name=" + d.ID + "-node,file.driver=file,file.filename=" + d.Path
	if d.ReadOnly {
		s += ",read-only=on"
	}
	return s
}
