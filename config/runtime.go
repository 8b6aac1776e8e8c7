package config

import (
	"fmt"
	"regexp"
	"sort"
)

// Runtime configures the runtime handlers (Kubernetes RuntimeClass handlers):
// each names a VMM, a guest and the VM's size.
type Runtime struct {
	DefaultHandler string             `toml:"default_handler" json:"default_handler" comment:"Handler for pods that name none (kubelet sends \"\")."`
	GuestDir       string             `toml:"guest_dir" json:"guest_dir" comment:"Kernel + initramfs built by 'cocoon guest build'."`
	Handlers       map[string]Handler `toml:"handlers" json:"handlers" comment:"Runtime handlers by name; unset fields take the built-in defaults."`
	ShareSizeMiB   uint64             `toml:"share_size_mib" json:"share_size_mib" comment:"Size of each pod's share, a tmpfs of its own, MiB: the most a guest can make the host hold there."`
	// HostNamespacePods is the policy for pods that ask for the host's
	// network, PID or IPC namespace under a VM handler.
	HostNamespacePods string `toml:"host_namespace_pods" json:"host_namespace_pods" comment:"Pods asking for a host namespace (hostNetwork, hostPID, hostIPC) under a VM handler: host runs them as host containers (see handlers' kind), reject refuses them."`
}

// Handler kinds: a VM per pod, or containers on the host.
const (
	KindVM   = "vm"
	KindHost = "host"
)

// Host namespace pod policies.
const (
	HostPodsHost   = "host"
	HostPodsReject = "reject"
)

// Handler is one runtime handler.
type Handler struct {
	Kind         string   `toml:"kind" json:"kind" comment:"vm (a VM per pod) or host (the pod's containers run on the host with libcontainer, as runc would; VM fields are ignored)."`
	VMM          string   `toml:"vmm" json:"vmm" comment:"qemu or clh (Cloud Hypervisor)."`
	Accel        string   `toml:"accel" json:"accel" comment:"qemu only: kvm, tcg, or auto (proves KVM by booting, else TCG with a warning)."`
	VCPUs        uint32   `toml:"vcpus" json:"vcpus" comment:"vCPUs at boot."`
	MaxVCPUs     uint32   `toml:"max_vcpus" json:"max_vcpus" comment:"vCPU hotplug limit; when unset, never below vcpus."`
	MemoryMiB    uint64   `toml:"memory_mib" json:"memory_mib" comment:"Memory at boot, MiB."`
	MaxMemoryMiB uint64   `toml:"max_memory_mib" json:"max_memory_mib" comment:"Memory hotplug limit, MiB; when unset, never below memory_mib."`
	KernelArgs   []string `toml:"kernel_args" json:"kernel_args" comment:"Extra guest kernel command line arguments."`
	Template     Template `toml:"template" json:"template" comment:"Snapshot template: VMs of this handler restore from a saved, booted guest instead of booting the kernel (qemu only)."`
	BootTimeout  Duration `toml:"boot_timeout" json:"boot_timeout" comment:"How long a VM may take from VMM start to a healthy agent."`
	GuestDir     string   `toml:"guest_dir" json:"guest_dir" comment:"Guest for this handler; empty: runtime.guest_dir."`
	Pool         Pool     `toml:"pool" json:"pool" comment:"Warm pool: VMs of this handler booted ahead of their pods, which RunPodSandbox claims instead of booting."`
}

// PoolAuto is Pool.Size's default: the host decides (Pool.Resolve).
const PoolAuto = -1

// Pool sizes a handler's warm pool.
type Pool struct {
	Size *int `toml:"size" json:"size" comment:"Warm VMs kept ready; 0 turns the pool off; -1 (auto): 2 where the host has room (at least 2 CPUs, and the warm VMs at most an eighth of MemAvailable), else 0."`
}

// poolVMOverheadMiB is what a warm VM costs the host beyond its guest
// memory (QEMU's own memory under TCG, virtiofsd, page tables).
const poolVMOverheadMiB = 128

// autoPoolSize is the size an auto pool takes where the host has room.
const autoPoolSize = 2

// Resolve is the pool's size on this host: Size, or for auto, 2 when the
// host has at least 2 CPUs and 2 warm VMs of memoryMiB (plus their VMM's
// overhead) take at most an eighth of its available memory, else 0. An
// eighth keeps the pool from competing with the pods it serves.
func (p Pool) Resolve(cpus int, memAvailableMiB, memoryMiB uint64) int {
	if p.Size != nil && *p.Size != PoolAuto {
		return *p.Size
	}
	need := autoPoolSize * (memoryMiB + poolVMOverheadMiB)
	if cpus < 2 || need*8 > memAvailableMiB {
		return 0
	}
	return autoPoolSize
}

// Template configures a handler's snapshot template.
type Template struct {
	Enabled bool `toml:"enabled" json:"enabled" comment:"Restore VMs of the handler's default size from a template (rebuilt in the background when the guest, QEMU or the handler's command line changes; until then, and whenever a restore fails, VMs boot cold). Clones share the template's memory contents, so their guests' random state is reseeded by the agent when the pod is set up."`
}

// handlerDefaults fill what a handler leaves unset, so a drop-in that sets one
// key of a handler does not zero the others.
var handlerDefaults = Handler{
	Kind: KindVM, VMM: "qemu", Accel: "auto", VCPUs: 1, MaxVCPUs: 4, MemoryMiB: 256, MaxMemoryMiB: 2048,
	BootTimeout: Duration(60e9),
}

// maxPoolSize bounds a pool: warm VMs cost memory whether used or not.
const maxPoolSize = 64

var handlerName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// fillDefaults completes every handler from handlerDefaults.
func (r *Runtime) fillDefaults() {
	for name, h := range r.Handlers {
		d := handlerDefaults
		if h.Kind == "" {
			h.Kind = d.Kind
		}
		if h.VMM == "" {
			h.VMM = d.VMM
		}
		if h.Accel == "" {
			h.Accel = d.Accel
		}
		if h.VCPUs == 0 {
			h.VCPUs = d.VCPUs
		}
		if h.MaxVCPUs == 0 {
			h.MaxVCPUs = max(d.MaxVCPUs, h.VCPUs)
		}
		if h.MemoryMiB == 0 {
			h.MemoryMiB = d.MemoryMiB
		}
		if h.MaxMemoryMiB == 0 {
			h.MaxMemoryMiB = max(d.MaxMemoryMiB, h.MemoryMiB)
		}
		if h.BootTimeout == 0 {
			h.BootTimeout = d.BootTimeout
		}
		if h.GuestDir == "" {
			h.GuestDir = r.GuestDir
		}
		// A pointer: 0 (off) is a value a drop-in may set, unset is auto.
		if h.Pool.Size == nil {
			auto := PoolAuto
			h.Pool.Size = &auto
		}
		r.Handlers[name] = h
	}
}

// HostHandler is the handler a pod asking for host namespaces runs under
// with the "host" policy: the first handler (by name) of kind host, else a
// built-in one with the defaults.
func (r *Runtime) HostHandler() (string, Handler) {
	for _, name := range r.HandlerNames() {
		if h := r.Handlers[name]; h.Kind == KindHost {
			return name, h
		}
	}
	h := handlerDefaults
	h.Kind, h.GuestDir = KindHost, r.GuestDir
	return "", h
}

// HandlerNames lists the handlers, sorted.
func (r *Runtime) HandlerNames() []string {
	names := make([]string, 0, len(r.Handlers))
	for n := range r.Handlers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Validate checks the runtime section.
func (r *Runtime) Validate() []*FieldError {
	errs := collect(requireAbs("runtime.guest_dir", r.GuestDir),
		oneOf("runtime.host_namespace_pods", r.HostNamespacePods, HostPodsHost, HostPodsReject))
	if r.ShareSizeMiB == 0 {
		errs = append(errs, fieldErr("runtime.share_size_mib", "must be at least 1"))
	}
	if len(r.Handlers) == 0 {
		errs = append(errs, fieldErr("runtime.handlers", "must define at least one handler"))
	}
	if _, ok := r.Handlers[r.DefaultHandler]; !ok {
		errs = append(errs, fieldErr("runtime.default_handler", "%q names no handler in runtime.handlers (have %v)", r.DefaultHandler, r.HandlerNames()))
	}
	for _, name := range r.HandlerNames() {
		h := r.Handlers[name]
		key := func(k string) string { return fmt.Sprintf("runtime.handlers.%s.%s", name, k) }
		if !handlerName.MatchString(name) {
			errs = append(errs, fieldErr("runtime.handlers."+name, "handler names are lowercase DNS labels"))
		}
		errs = append(errs, collect(
			oneOf(key("kind"), h.Kind, KindVM, KindHost),
			oneOf(key("vmm"), h.VMM, "qemu", "clh"),
			oneOf(key("accel"), h.Accel, "auto", "kvm", "tcg"),
			requireAbs(key("guest_dir"), h.GuestDir),
		)...)
		if h.MaxVCPUs < h.VCPUs {
			errs = append(errs, fieldErr(key("max_vcpus"), "must be at least vcpus (%d)", h.VCPUs))
		}
		if h.MemoryMiB < 128 {
			errs = append(errs, fieldErr(key("memory_mib"), "must be at least 128 (the guest needs it), got %d", h.MemoryMiB))
		}
		if h.MaxMemoryMiB < h.MemoryMiB {
			errs = append(errs, fieldErr(key("max_memory_mib"), "must be at least memory_mib (%d)", h.MemoryMiB))
		}
		if h.BootTimeout <= 0 {
			errs = append(errs, fieldErr(key("boot_timeout"), "must be positive"))
		}
		if n := h.Pool.Size; n != nil && (*n < PoolAuto || *n > maxPoolSize) {
			errs = append(errs, fieldErr(key("pool.size"), "must be -1 (auto) or 0 to %d, got %d", maxPoolSize, *n))
		}
	}
	return errs
}
