package guest

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Need is one piece of kernel functionality the guest agent relies on.
// Whether it is built into the kernel (=y) or a module (=m) is read from the
// kernel's config, so the same table works for any kernel flavour.
type Need struct {
	// Config is the Kconfig symbol without the CONFIG_ prefix.
	Config string
	// Module is the module providing it when Config=m; "" means the
	// feature must be built in (it is needed before modules can load).
	Module string
	// Optional features may be missing from the kernel: the guest falls
	// back to something else (9p is the share fallback for virtiofs).
	Optional bool
	// Why says what the agent uses it for; it goes into the manifest.
	Why string
}

// Needs is the single list of what the guest kernel must provide. Modules'
// own dependencies (virtio, virtio_ring, failover, ...) are not listed: they
// come from the module dependency graph.
var Needs = []Need{
	// Built in or nothing: the agent needs these before it loads modules.
	{Config: "BLK_DEV_INITRD", Why: "boot from the initramfs"},
	{Config: "RD_ZSTD", Why: "the initramfs is zstd-compressed"},
	{Config: "DEVTMPFS", Why: "device nodes for virtio ports and disks"},
	{Config: "TMPFS", Why: "/run and /tmp"},
	{Config: "SERIAL_8250_CONSOLE", Why: "early console on ttyS0"},
	{Config: "PCI", Why: "virtio devices sit on PCI"},
	{Config: "UNIX", Why: "unix sockets for the container runtime"},
	{Config: "INET", Why: "pod networking"},
	{Config: "NAMESPACES", Why: "container isolation"},
	{Config: "CGROUPS", Why: "container resource limits"},
	{Config: "SECCOMP", Why: "container seccomp profiles"},

	// Virtio transports and devices.
	{Config: "VIRTIO_PCI", Module: "virtio_pci", Why: "virtio PCI transport"},
	{Config: "VIRTIO_MMIO", Module: "virtio_mmio", Optional: true, Why: "virtio MMIO transport for microVM machines"},
	{Config: "VIRTIO_CONSOLE", Module: "virtio_console", Why: "virtio-serial ports: the agent channel where there is no vsock"},
	{Config: "VSOCKETS", Module: "vsock", Why: "vsock sockets: the agent channel"},
	{Config: "VIRTIO_VSOCKETS", Module: "vmw_vsock_virtio_transport", Why: "vsock over virtio"},
	{Config: "VIRTIO_NET", Module: "virtio_net", Why: "pod network interface"},
	{Config: "VIRTIO_BLK", Module: "virtio_blk", Why: "block-device rootfs and volumes"},
	{Config: "BRIDGE", Module: "bridge", Optional: true, Why: "privileged containers that build bridges (critest's brctl check)"},
	{Config: "VETH", Module: "veth", Optional: true, Why: "veth pairs for network tooling in privileged containers"},
	{Config: "FW_CFG_SYSFS", Module: "qemu_fw_cfg", Why: "QEMU's fw_cfg in sysfs: the agent reads its per-VM token there"},
	{Config: "HW_RANDOM_VIRTIO", Module: "virtio_rng", Optional: true, Why: "entropy early in boot"},
	{Config: "VIRTIO_BALLOON", Module: "virtio_balloon", Optional: true, Why: "free page reporting: the guest hands freed memory back to the host"},

	// Filesystems.
	{Config: "EXT4_FS", Module: "ext4", Why: "filesystem on virtio-blk images"},
	{Config: "OVERLAY_FS", Module: "overlay", Why: "container root filesystems"},
	{Config: "FUSE_FS", Module: "fuse", Why: "virtiofs runs on fuse"},
	{Config: "VIRTIO_FS", Module: "virtiofs", Why: "shared directories from the host"},
	{Config: "NET_9P", Module: "9pnet", Optional: true, Why: "9p: share fallback without virtiofsd"},
	{Config: "NET_9P_VIRTIO", Module: "9pnet_virtio", Optional: true, Why: "9p over virtio"},
	{Config: "9P_FS", Module: "9p", Optional: true, Why: "9p filesystem"},
}

// Plan is how a given kernel provides Needs.
type Plan struct {
	Builtin     []string // Config symbols set =y
	Modules     []string // module names to load (without their deps)
	Unavailable []string // optional Config symbols this kernel lacks
}

// PlanFor classifies needs against a kernel config (as parsed by
// ParseConfig). A required need the kernel does not have, or has only as a
// module when it must be built in, is an error naming all such symbols.
func PlanFor(needs []Need, config map[string]string) (Plan, error) {
	var p Plan
	var missing []string
	for _, n := range needs {
		switch v := config[n.Config]; {
		case v == "y":
			p.Builtin = append(p.Builtin, n.Config)
		case v == "m" && n.Module != "":
			p.Modules = append(p.Modules, n.Module)
		case n.Optional:
			p.Unavailable = append(p.Unavailable, n.Config)
		case v == "m":
			missing = append(missing, "CONFIG_"+n.Config+"=m (must be =y)")
		default:
			missing = append(missing, "CONFIG_"+n.Config)
		}
	}
	if len(missing) > 0 {
		return Plan{}, fmt.Errorf("guest: kernel lacks %s", strings.Join(missing, ", "))
	}
	return p, nil
}

// ParseConfig reads a kernel .config: CONFIG_X=value lines. Values keep
// their quotes; "is not set" comments are simply absent from the map.
func ParseConfig(r io.Reader) (map[string]string, error) {
	cfg := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "CONFIG_") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "CONFIG_"), "=")
		if ok {
			cfg[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("guest: read kernel config: %w", err)
	}
	return cfg, nil
}
