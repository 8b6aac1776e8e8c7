package clh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// stopGrace is how long Stop lets CH shut down through its API before
// killing it.
const stopGrace = 3 * time.Second

// VMM is one Cloud Hypervisor VM.
type VMM struct {
	log    *logrus.Entry
	api    *api
	id     string
	runDir string
	vsock  string

	proc    *vm.Watched
	helpers []*vm.Watched
	// cleanup undoes everything Create (or Adopt) set up, last first.
	cleanup *pipeline.Cleanup

	stopMu  sync.Mutex // serialises Stop
	stopped bool

	mu                sync.Mutex
	vcpus, maxVCPUs   uint32
	memMiB, maxMemMiB uint64
	stopping          bool
	// failed says why we killed CH ourselves (a helper died).
	failed error
}

var _ vm.VMM = (*VMM)(nil)

// Start implements vm.VMM: boots the created VM.
func (v *VMM) Start(ctx context.Context) error {
	resp, err := v.api.c.BootVM(ctx)
	if err := check("vm.boot", resp, err, nil); err != nil {
		return err
	}
	return v.api.expectState(ctx, clhapi.Running)
}

// Stop implements vm.VMM: vm.shutdown, vmm.shutdown, up to 3 s for CH to
// exit, then SIGKILL, virtiofsd stopped, sockets and run dir removed. The
// teardown runs even when ctx has ended (that only skips the graceful part).
func (v *VMM) Stop(ctx context.Context) error {
	v.stopMu.Lock()
	defer v.stopMu.Unlock()
	if v.stopped {
		return nil
	}
	v.mu.Lock()
	v.stopping = true
	v.mu.Unlock()
	if !v.proc.Exited() && ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, stopGrace)
		// Both may fail (a VM never booted has nothing to shut down); the
		// kill below is what guarantees the outcome.
		resp, err := v.api.c.ShutdownVM(gctx)
		if err := check("vm.shutdown", resp, err, nil); err != nil {
			v.log.WithError(err).Debug("graceful VM shutdown failed")
		}
		resp, err = v.api.c.ShutdownVMM(gctx)
		if err := check("vmm.shutdown", resp, err, nil); err != nil {
			v.log.WithError(err).Debug("graceful VMM shutdown failed")
		}
		select {
		case <-v.proc.Done():
		case <-gctx.Done():
			v.log.Warn("cloud-hypervisor did not exit in time, killing it")
		}
		cancel()
	}
	err := v.cleanup.Unwind(v.log)
	v.stopped = true
	if err != nil {
		return fmt.Errorf("clh: stop %s: %w", v.id, err)
	}
	return nil
}

// Done implements vm.VMM.
func (v *VMM) Done() <-chan struct{} { return v.proc.Done() }

// Err implements vm.VMM.
func (v *VMM) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.failed != nil {
		return v.failed
	}
	return v.proc.Err()
}

// superviseHelpers kills CH when a virtiofsd dies under a running VM: its
// shares are gone for good, and Done/Err then tell the caller why.
func (v *VMM) superviseHelpers() {
	for _, h := range v.helpers {
		go func() {
			select {
			case <-v.proc.Done():
				return
			case <-h.Done():
			}
			v.mu.Lock()
			if v.stopping {
				v.mu.Unlock()
				return
			}
			v.failed = fmt.Errorf("%s (pid %d) exited (%v): VM stopped", h.Name, h.Pid, h.Err())
			v.mu.Unlock()
			v.log.WithError(v.Err()).Error("helper died, killing cloud-hypervisor")
			_ = v.proc.Kill()
		}()
	}
}

// AddNet implements vm.VMM: hot-adds a NIC, its tap fd passed as SCM_RIGHTS.
func (v *VMM) AddNet(ctx context.Context, nic vm.NIC) error {
	if err := validNIC(nic); err != nil {
		return err
	}
	var dev clhapi.PciDeviceInfo
	if err := v.api.putWithFiles(ctx, "vm.add-net", netConfig(nic), []*os.File{nic.Tap}, &dev); err != nil {
		return err
	}
	v.log.WithFields(logrus.Fields{"nic": dev.Id, "bdf": dev.Bdf}).Debug("NIC added")
	return nil
}

// RemoveNet implements vm.VMM.
func (v *VMM) RemoveNet(ctx context.Context, id string) error { return v.removeDevice(ctx, id) }

// AddDisk implements vm.VMM.
func (v *VMM) AddDisk(ctx context.Context, disk vm.Disk) error {
	if disk.ID == "" || disk.Path == "" {
		return fmt.Errorf("clh: disk needs an id and a path (got %q, %q)", disk.ID, disk.Path)
	}
	var dev clhapi.PciDeviceInfo
	resp, err := v.api.c.AddDiskVM(ctx, diskConfig(disk))
	if err := check("vm.add-disk", resp, err, &dev); err != nil {
		return err
	}
	v.log.WithFields(logrus.Fields{"disk": dev.Id, "bdf": dev.Bdf}).Debug("disk added")
	return nil
}

// RemoveDisk implements vm.VMM.
func (v *VMM) RemoveDisk(ctx context.Context, id string) error { return v.removeDevice(ctx, id) }

func (v *VMM) removeDevice(ctx context.Context, id string) error {
	resp, err := v.api.c.RemoveDeviceVM(ctx, clhapi.VmRemoveDevice{Id: &id})
	return check("vm.remove-device", resp, err, nil)
}

// Resize implements vm.VMM; 0 leaves that dimension as it is. CH answers
// 429 while a vCPU removal is still pending in the guest: retry until it is
// done or ctx ends.
func (v *VMM) Resize(ctx context.Context, vcpus uint32, memoryMiB uint64) error {
	v.mu.Lock()
	maxV, maxM := v.maxVCPUs, v.maxMemMiB
	v.mu.Unlock()
	if maxV != 0 && vcpus > maxV {
		return fmt.Errorf("clh: resize to %d vCPUs above the limit of %d", vcpus, maxV)
	}
	if maxM != 0 && memoryMiB > maxM {
		return fmt.Errorf("clh: resize to %d MiB above the limit of %d MiB", memoryMiB, maxM)
	}
	var body clhapi.VmResize
	if vcpus != 0 {
		body.DesiredVcpus = ptr(int(vcpus))
	}
	if memoryMiB != 0 {
		body.DesiredRam = ptr(int64(memoryMiB) * mib)
	}
	if body.DesiredVcpus == nil && body.DesiredRam == nil {
		return nil
	}
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		resp, err := v.api.c.ResizeVM(ctx, body)
		err = check("vm.resize", resp, err, nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests {
			if err != nil {
				return err
			}
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (still pending when giving up: %w)", err, ctx.Err())
		case <-time.After(delay):
		}
	}
	v.mu.Lock()
	if vcpus != 0 {
		v.vcpus = vcpus
	}
	if memoryMiB != 0 {
		v.memMiB = memoryMiB
	}
	v.mu.Unlock()
	return nil
}

// Pids implements vm.VMM: cloud-hypervisor first, then virtiofsd.
func (v *VMM) Pids() []int {
	pids := []int{v.proc.Pid}
	for _, h := range v.helpers {
		pids = append(pids, h.Pid)
	}
	return pids
}

// DialAgent implements vm.VMM over hybrid vsock.
func (v *VMM) DialAgent(ctx context.Context) (net.Conn, error) {
	return dialHybridVsock(ctx, v.vsock, agentPort, v.proc.Done())
}

// State implements vm.VMM.
func (v *VMM) State() *vm.State {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := &vm.State{
		Driver: Name, ID: v.id, RunDir: v.runDir,
		ControlSocket: v.api.sock, AgentSocket: v.vsock,
		VCPUs: v.vcpus, MemoryMiB: v.memMiB,
	}
	if v.proc != nil { // nil while Create has not spawned the VMM yet
		st.Pid, st.StartTime = v.proc.Pid, v.proc.StartTime
	}
	for _, h := range v.helpers {
		st.Helpers = append(st.Helpers, h.Process)
	}
	return st
}

// Counters returns CH's per-device counters (vm.counters).
func (v *VMM) Counters(ctx context.Context) (clhapi.VmCounters, error) {
	var c clhapi.VmCounters
	resp, err := v.api.c.CountersVM(ctx)
	if err := check("vm.counters", resp, err, &c); err != nil {
		return nil, err
	}
	return c, nil
}
