package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/clh"
	"github.com/cocoon-runtime/cocoon/vm/guest"
	"github.com/cocoon-runtime/cocoon/vm/qemu"
)

// Booter boots a VM with the driver of a VMM (config's handler.vmm), waits
// for a healthy agent within timeout, stops the VM, and says how long the boot
// took.
type Booter interface {
	Boot(ctx context.Context, vmm string, spec *vm.Spec, timeout time.Duration) (time.Duration, error)
}

// driverBooter boots through the drivers cocoond uses, with vm.BootProbe:
// the create, start and wait-for-agent path of a pod.
type driverBooter map[string]vm.Driver

func (d driverBooter) Boot(ctx context.Context, vmm string, spec *vm.Spec, timeout time.Duration) (time.Duration, error) {
	driver, ok := d[vmm]
	if !ok {
		return 0, fmt.Errorf("no driver for vmm %q", vmm)
	}
	return vm.BootProbe(ctx, driver, spec, timeout)
}

// NewBooter returns the real drivers, running the binaries h names, logging
// only errors (the report says what happened).
func NewBooter(h *Host) Booter {
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	entry := logrus.NewEntry(log)
	return driverBooter{
		"qemu": qemu.New(qemu.Options{Binary: h.QEMU, Log: entry}),
		"clh":  clh.New(clh.Options{Binary: h.CloudHypervisor, Log: entry}),
	}
}

// attempt is one boot with one accelerator.
type attempt struct {
	accel   string
	took    time.Duration
	err     error
	timeout time.Duration
	skipped string // why it was not tried
}

func (a attempt) booted() bool { return a.skipped == "" && a.err == nil }

func (a attempt) String() string {
	switch {
	case a.skipped != "":
		return fmt.Sprintf("%s: not tried (%s)", a.accel, a.skipped)
	case a.err == nil:
		return fmt.Sprintf("%s: agent healthy in %s", a.accel, a.took.Round(100*time.Millisecond))
	case errors.Is(a.err, context.DeadlineExceeded):
		return fmt.Sprintf("%s: no agent within %s (guest hangs)", a.accel, a.timeout)
	default:
		return fmt.Sprintf("%s: %v", a.accel, a.err)
	}
}

// prober boots one probe VM per handler and accelerator under a temp dir it
// removes at the end.
type prober struct {
	host       *Host
	booter     Booter
	kvmTimeout time.Duration
	dir        string
}

// bootAll boots every handler and adds a failure when none can boot.
func (h *Host) bootAll(ctx context.Context, rt config.Runtime, opts Options, emit func(...Result)) {
	p := &prober{host: h, booter: opts.Booter, kvmTimeout: opts.KVMTimeout}
	if p.booter == nil {
		p.booter = NewBooter(h)
	}
	if p.kvmTimeout == 0 {
		p.kvmTimeout = qemu.DefaultKVMProbeTimeout
	}
	dir, err := os.MkdirTemp(opts.TempDir, "cocoon-check-")
	if err != nil {
		emit(problem(Fail, "boot", "make the temp dir writable (TMPDIR)", "no temp dir for the probe VMs: %v", err))
		return
	}
	defer os.RemoveAll(dir)
	p.dir = dir

	booted := 0
	for _, name := range rt.HandlerNames() {
		if rt.Handlers[name].Kind == config.KindHost {
			continue // no VM to boot
		}
		r := p.boot(ctx, name, rt.Handlers[name])
		if r.Status == OK {
			booted++
		}
		emit(r)
	}
	if booted == 0 {
		emit(problem(Fail, "boot", "fix the problems reported above", "no runtime handler can boot a VM: pods cannot run"))
	}
}

func (p *prober) boot(ctx context.Context, name string, hd config.Handler) Result {
	title := fmt.Sprintf("boot %s (%s)", name, hd.VMM)
	bin := p.host.vmmBinary(hd.VMM)
	if _, err := p.host.LookPath(bin); err != nil {
		return problem(Warn, title, vmmFix[hd.VMM], "skipped: %s not installed", bin)
	}
	g, err := guest.Locate(hd.GuestDir)
	if err != nil {
		return problem(Warn, title, "cocoon guest build --out "+hd.GuestDir, "skipped: no usable guest: %v", err)
	}
	if hd.VMM == "clh" {
		// Cloud Hypervisor runs only on KVM.
		a := p.try(ctx, name, hd, g, "kvm", hd.BootTimeout.Std())
		if a.booted() {
			return ok(title, "%s", a)
		}
		return problem(Fail, title, "Cloud Hypervisor needs working KVM: use a qemu handler on this host", "%s", a)
	}
	kvm := p.try(ctx, name, hd, g, "kvm", p.kvmTimeout)
	tcg := p.try(ctx, name, hd, g, "tcg", hd.BootTimeout.Std())
	return qemuVerdict(title, name, hd.Accel, kvm, tcg)
}

// try boots the handler's VM with accel, with no network and an empty share.
func (p *prober) try(ctx context.Context, name string, hd config.Handler, g *guest.Manifest, accel string, timeout time.Duration) attempt {
	a := attempt{accel: accel, timeout: timeout}
	if accel == "kvm" {
		if err := p.host.openKVM(); err != nil {
			a.skipped = err.Error()
			return a
		}
	}
	id := name + "-" + accel
	share := filepath.Join(p.dir, id+"-share")
	if err := os.Mkdir(share, 0o700); err != nil {
		a.err = err
		return a
	}
	// The probe's guest could write its share: remove it without following
	// a link or crossing a mount, as pod shares are.
	defer func() { _ = vm.RemoveAllBeneath(p.dir, id+"-share") }()
	spec := &vm.Spec{
		ID: "check-" + id, RunDir: filepath.Join(p.dir, id),
		Kernel: g.KernelPath(), Initramfs: g.InitramfsPath(), KernelArgs: hd.KernelArgs,
		VCPUs: hd.VCPUs, MaxVCPUs: hd.MaxVCPUs, MemoryMiB: hd.MemoryMiB, MaxMemoryMiB: hd.MaxMemoryMiB,
		Shares: []vm.Share{{Tag: "check", Source: share}},
		Accel:  accel, BootTimeout: timeout,
	}
	a.took, a.err = p.booter.Boot(ctx, hd.VMM, spec, timeout)
	return a
}

// qemuVerdict reports both attempts and what the handler's accel makes of them.
func qemuVerdict(title, handler, accel string, kvm, tcg attempt) Result {
	detail := kvm.String() + " -> " + tcg.String()
	useOther := fmt.Sprintf(`set accel = "auto" in [runtime.handlers.%s]`, handler)
	switch {
	case accel == "kvm" && kvm.booted():
		return ok(title, "%s; accel=kvm works", detail)
	case accel == "kvm":
		fix := "make KVM boot the guest (see /dev/kvm above)"
		if tcg.booted() {
			fix = useOther + " (or \"tcg\")"
		}
		return problem(Fail, title, fix, "%s; accel=kvm cannot boot", detail)
	case accel == "tcg" && tcg.booted() && kvm.booted():
		return ok(title, "%s; accel=tcg (KVM works too: accel=auto would use it)", detail)
	case accel == "tcg" && tcg.booted():
		return ok(title, "%s; accel=tcg", detail)
	case accel == "tcg" && kvm.booted():
		return problem(Fail, title, useOther+" (or \"kvm\")", "%s; accel=tcg cannot boot", detail)
	case accel == "auto" && kvm.booted():
		return ok(title, "%s; accel=auto will pick kvm", detail)
	case accel == "auto" && tcg.booted():
		return ok(title, "%s; accel=auto will pick tcg", detail)
	}
	return problem(Fail, title, "rebuild the guest (cocoon guest build) and check that "+qemu.DefaultBinary+" runs it; raise boot_timeout on a slow host",
		"%s; accel=%s cannot boot", detail, accel)
}

// openKVM opens /dev/kvm the way QEMU does; nil when it can.
func (h *Host) openKVM() error {
	path := filepath.Join(h.DevDir, "kvm")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return errors.New(strings.TrimPrefix(describeMissing(path, err), "open "))
	}
	return f.Close()
}
