package clh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
	"github.com/cocoon-runtime/cocoon/vm"
)

// processName names the cloud-hypervisor process in logs, errors and its
// log file.
const processName = "cloud-hypervisor"

// VMM is one Cloud Hypervisor VM: the shared supervisor runs its processes,
// the driver speaks CH's REST API to it.
type VMM struct {
	*vm.Supervisor
	log   *logrus.Entry
	api   *api
	vsock string

	mu        sync.Mutex // the limits; serialises Resize
	maxVCPUs  uint32
	maxMemMiB uint64
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

// shutdown is vm.shutdown then vmm.shutdown (vm.Supervisor's graceful stop).
// Both may fail: a VM never booted has nothing to shut down.
func (v *VMM) shutdown(ctx context.Context) error {
	resp, err := v.api.c.ShutdownVM(ctx)
	vmErr := check("vm.shutdown", resp, err, nil)
	resp, err = v.api.c.ShutdownVMM(ctx)
	return errors.Join(vmErr, check("vmm.shutdown", resp, err, nil))
}

// Resize implements vm.VMM; 0 leaves that dimension as it is. CH answers
// 429 while a vCPU removal is still pending in the guest: retry until it is
// done or ctx ends.
func (v *VMM) Resize(ctx context.Context, vcpus uint32, memoryMiB uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.maxVCPUs != 0 && vcpus > v.maxVCPUs {
		return fmt.Errorf("clh: resize to %d vCPUs above the limit of %d", vcpus, v.maxVCPUs)
	}
	if v.maxMemMiB != 0 && memoryMiB > v.maxMemMiB {
		return fmt.Errorf("clh: resize to %d MiB above the limit of %d MiB", memoryMiB, v.maxMemMiB)
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
	v.UpdateState(func(st *vm.State) {
		if vcpus != 0 {
			st.VCPUs = vcpus
		}
		if memoryMiB != 0 {
			st.MemoryMiB = memoryMiB
		}
	})
	return nil
}

// DialAgent implements vm.VMM over hybrid vsock.
func (v *VMM) DialAgent(ctx context.Context) (net.Conn, error) {
	return dialHybridVsock(ctx, v.vsock, agentPort, v.Done())
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
