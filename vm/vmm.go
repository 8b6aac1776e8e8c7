// Package vm runs pod VMs. It knows nothing about Kubernetes: a VM is a kernel,
// an initramfs, some vCPUs and memory, shared directories, NICs, disks, and a
// channel to the agent. Drivers live in vm/qemu and vm/clh; vm/guest builds
// the kernel and initramfs.
package vm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNotRunning says the VM (its VMM process) is gone.
var ErrNotRunning = errors.New("vm is not running")

// Driver creates VMs of one hypervisor and re-adopts the ones it left running.
// Drivers build on Supervisor, which owns what is not about the hypervisor.
type Driver interface {
	// Name is the driver's name in config and state ("qemu", "clh").
	Name() string
	// Create starts the VMM with the VM's devices but does not run the guest
	// yet. On error nothing it started or wrote is left behind.
	Create(ctx context.Context, spec *Spec) (VMM, error)
	// Adopt re-attaches to a VM from the state a previous cocoond persisted.
	// A VM whose VMM or helper is gone, or whose VMM does not answer, is an
	// error wrapping ErrNotRunning, and the driver has already removed what
	// it left (processes, run dir): the caller has no VMM to Stop.
	Adopt(ctx context.Context, st *State) (VMM, error)
}

// VMM controls one VM.
type VMM interface {
	// Start runs the guest (boots it).
	Start(ctx context.Context) error
	// Stop ends the VM: gracefully through the VMM, then by killing it, and
	// removes its helpers, sockets and files. Stopping a stopped VM is fine.
	Stop(ctx context.Context) error
	// Done is closed when the VMM process has exited; Err then says why,
	// wrapping ErrNotRunning. A dead helper (virtiofsd) ends the VM too.
	Done() <-chan struct{}
	Err() error

	// Resize sets the guest's vCPUs and memory within the limits of the spec.
	Resize(ctx context.Context, vcpus uint32, memoryMiB uint64) error
	// DialAgent connects to the agent's ttRPC endpoint in the guest.
	DialAgent(ctx context.Context) (net.Conn, error)
	// State is what to persist so a restarted cocoond can Adopt the VM.
	State() *State
}

// Spec describes a VM to create.
type Spec struct {
	ID string
	// RunDir is the VM's private runtime directory (sockets, console log);
	// the driver creates it and Stop removes it.
	RunDir    string
	Kernel    string
	Initramfs string
	// KernelArgs are appended to the driver's own command line.
	KernelArgs []string

	VCPUs        uint32
	MaxVCPUs     uint32 // hotplug limit; 0 means VCPUs
	MemoryMiB    uint64
	MaxMemoryMiB uint64 // hotplug limit; 0 means MemoryMiB

	Shares []Share
	NICs   []NIC
	Disks  []Disk

	// Netns is the network namespace the sandbox process runs in: the host
	// driver's agent joins it; "" is the host's. VM drivers take NICs instead.
	Netns string

	// Accel is "kvm", "tcg" or "auto" (drivers that emulate; others need KVM).
	Accel string
	// BootTimeout bounds how long an accelerator probe may take (auto).
	BootTimeout time.Duration
	// Template, when set, names the snapshot template (one per handler) a
	// driver that has templates restores the VM from instead of booting the
	// kernel; a missing, stale or failing template means a cold boot.
	Template string
}

// Share is a host directory the guest mounts with virtio-fs under Tag.
type Share struct {
	Tag    string
	Source string
}

// NIC is a virtio-net device on a tap the caller created (in the pod netns).
type NIC struct {
	ID  string
	Tap *os.File // the open tap; the driver passes the fd to the VMM
	MAC net.HardwareAddr
	MTU int
}

// Disk is a virtio-blk device backed by a host file or block device.
type Disk struct {
	ID       string
	Path     string
	ReadOnly bool
}

// State is a driver's persisted view of a running VM.
type State struct {
	Driver string `json:"driver"`
	ID     string `json:"id"`
	RunDir string `json:"runDir"`
	// Pid and StartTime identify the VMM process; StartTime (from
	// /proc/<pid>/stat) guards against pid reuse after a reboot or crash.
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	// Helpers are other processes the VM needs (virtiofsd), with start times.
	Helpers []Process `json:"helpers,omitempty"`
	// ControlSocket is the QMP or REST API socket; AgentSocket the agent channel.
	ControlSocket string `json:"controlSocket"`
	AgentSocket   string `json:"agentSocket"`
	// AgentVsockCID is set when the agent is reached over vhost-vsock.
	AgentVsockCID uint32 `json:"agentVsockCID,omitempty"`
	VCPUs         uint32 `json:"vcpus"`
	MemoryMiB     uint64 `json:"memoryMiB"`
	Accel         string `json:"accel,omitempty"`
}

// Pids are the VMM process and its helpers (virtiofsd): what a pod cgroup
// holds, what a priority applies to.
func (s *State) Pids() []int {
	if s.Pid == 0 {
		return nil
	}
	pids := []int{s.Pid}
	for _, h := range s.Helpers {
		pids = append(pids, h.Pid)
	}
	return pids
}

// Process is a pid with its start time.
type Process struct {
	Name      string `json:"name"`
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
}

// ConsoleLog is the guest serial console's file in a VM's run dir (both
// drivers write it there).
func ConsoleLog(runDir string) string { return filepath.Join(runDir, "console.log") }

// FileTail returns the last max bytes of a log file, trimmed, or "" when
// there is nothing to read: for errors that should carry the reason a VMM or
// guest left in its log before its run dir goes away.
func FileTail(path string, max int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(data))
	if len(s) > max {
		s = "…" + s[len(s)-max:]
	}
	return s
}

// FastBootKernelArgs trim guest kernel work a VM does not need: a reliable
// TSC without the clocksource watchdog or the IO-APIC timer check, expedited
// RCU grace periods, no PS/2 probing, no switch to uniprocessor lock
// prefixes (vCPUs may be hotplugged), no crypto self-tests. About 0.4 s of
// a 4 s boot under TCG.
const FastBootKernelArgs = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 " +
	"i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp cryptomgr.notests"
