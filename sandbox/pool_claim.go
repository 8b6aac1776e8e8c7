package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/guest"
)

// bootWarm boots a warm VM for handler: the default WarmMaker. It is a
// pod's boot without the pod: the share starts empty, the NIC's tap
// connects to nothing, and the agent gets no CreateSandbox. Its processes
// run at the lowest priority. On error nothing of it is left.
func (m *Manager) bootWarm(ctx context.Context, handler string, h config.Handler) (_ *warmVM, err error) {
	wn, ok := m.opts.Network.(warmNetwork)
	if !ok {
		return nil, fmt.Errorf("%w: the network cannot hold a warm VM's tap", errdefs.ErrFailedPrecondition)
	}
	driver, ok := m.opts.Drivers[h.VMM]
	if !ok {
		return nil, fmt.Errorf("%w: VMM %q is not available", errdefs.ErrFailedPrecondition, h.VMM)
	}
	ctx, cancel := context.WithTimeout(ctx, warmBootTimeouts*h.BootTimeout.Std())
	defer cancel()
	id := newID()
	w := &warmVM{id: id, handler: handler, runDir: filepath.Join(m.opts.RunDir, id), mac: warmMAC()}
	w.shareDir = filepath.Join(w.runDir, shareDirName)
	log := m.opts.Log.WithFields(map[string]any{"warm_vm": id, "handler": handler})
	var undo pipeline.Cleanup
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("warm VM: %w", err), undo.Unwind(log))
		}
	}()
	undo.Push("dirs", func() error { return removePodDirs(w.runDir, w.shareDir) })
	if err := mkdirs(w.runDir); err != nil {
		return nil, err
	}
	if err := mountShare(w.shareDir, m.opts.Runtime.ShareSizeMiB); err != nil {
		return nil, err
	}
	netns, tap, err := wn.Hold(ctx, id)
	if err != nil {
		return nil, err
	}
	w.netns = netns
	undo.Push("network", func() error { return m.opts.Network.Detach(context.Background(), id, netns) })
	// The VMM has its own copy once created; the tap lives as long as it.
	defer tap.Close()
	g, err := guest.Locate(h.GuestDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrFailedPrecondition, err)
	}
	start := time.Now()
	v, err := driver.Create(ctx, &vm.Spec{
		ID: id, RunDir: m.vmRunDir(id),
		Kernel: g.KernelPath(), Initramfs: g.InitramfsPath(), KernelArgs: h.KernelArgs,
		VCPUs: h.VCPUs, MaxVCPUs: h.MaxVCPUs, MemoryMiB: h.MemoryMiB, MaxMemoryMiB: h.MaxMemoryMiB,
		Shares: []vm.Share{{Tag: shareTag, Source: w.shareDir}},
		NICs:   []vm.NIC{{ID: "eth0", Tap: tap, MAC: w.mac, MTU: 1500}},
		Accel:  h.Accel, BootTimeout: h.BootTimeout.Std(),
		// Where the handler has a template, a warm VM is restored from it
		// rather than booted: the refill costs a fraction of a boot's CPU.
		Template: templateFor(handler, h, h.VCPUs, h.MemoryMiB),
	})
	if err != nil {
		return nil, err
	}
	undo.Push("vm", func() error { return v.Stop(context.Background()) })
	// Before the guest runs: the threads QEMU starts later inherit it.
	setNice(v.State().Pids(), warmNice)
	if err := v.Start(ctx); err != nil {
		return nil, err
	}
	c, err := m.waitAgent(ctx, v)
	if err != nil {
		if tail := vm.FileTail(vm.ConsoleLog(v.State().RunDir), 800); tail != "" {
			err = fmt.Errorf("%w; guest console ends: %s", err, tail)
		}
		return nil, err
	}
	w.vmm, w.client = v, c
	setNice(v.State().Pids(), warmNice)
	log.WithField("took", time.Since(start).String()).Info("warm VM ready")
	return w, nil
}

// discardWarm removes a warm VM whole: the VM, then its netns (with whatever
// CNI ADD made there), then its dirs. Each part tolerates being gone.
func (m *Manager) discardWarm(ctx context.Context, w *warmVM) error {
	var errs []error
	if w.client != nil {
		_ = w.client.Close()
	}
	if w.vmm != nil {
		errs = append(errs, w.vmm.Stop(ctx))
	}
	if w.netns != "" {
		errs = append(errs, m.opts.Network.Detach(ctx, w.id, w.netns))
	}
	errs = append(errs, removePodDirs(w.runDir, w.shareDir))
	return errors.Join(errs...)
}

// attachHeld attaches the pod's network in the warm VM's netns.
func (m *Manager) attachHeld(ctx context.Context, req PodNetworkRequest, w *warmVM) (*PodNetwork, error) {
	wn, ok := m.opts.Network.(warmNetwork)
	if !ok {
		return nil, fmt.Errorf("%w: the network cannot attach a warm VM", errdefs.ErrFailedPrecondition)
	}
	return wn.AttachHeld(ctx, req, w.netns)
}

// claimedNetwork is what the guest of w must configure: the NIC it booted
// with (found by its boot MAC) takes the veth's MAC. For a cold boot (w nil)
// the NIC has the veth's MAC already.
func claimedNetwork(n *PodNetwork, w *warmVM) *PodNetwork {
	if w == nil || n.Interface == nil {
		return n
	}
	out := *n
	out.Interface = proto.Clone(n.Interface).(*agentapi.Interface)
	out.Interface.SetHwAddr = n.MAC.String()
	out.Interface.HwAddr = w.mac.String()
	return &out
}

// claimPriority gives a claimed VM's processes back the normal priority.
func claimPriority(v vm.VMM) error {
	setNice(v.State().Pids(), 0)
	return nil
}

// setNice sets the niceness of every thread of pids (niceness is per
// thread on Linux). Best effort: a thread may end meanwhile.
func setNice(pids []int, nice int) {
	for _, pid := range pids {
		tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil {
				_ = unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
			}
		}
	}
}

// warmMAC is a random locally administered unicast MAC for a warm VM's NIC;
// the claim replaces it with the veth's.
func warmMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac)
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// withoutSteps drops the named steps.
func withoutSteps(steps []pipeline.Step, names ...string) []pipeline.Step {
	out := steps[:0:0]
	for _, s := range steps {
		drop := false
		for _, n := range names {
			drop = drop || s.Name == n
		}
		if !drop {
			out = append(out, s)
		}
	}
	return out
}
