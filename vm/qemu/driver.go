package qemu

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

const (
	// DefaultBinary is looked up on PATH when Options.Binary is empty.
	DefaultBinary = "qemu-system-x86_64"
	// DefaultKVMProbeTimeout bounds accel "auto"'s KVM boot when Options
	// leave it unset: a guest KVM boots is up well within it.
	DefaultKVMProbeTimeout = 15 * time.Second
)

// Options configure the driver.
type Options struct {
	// Binary is DefaultBinary or a path (looked up on PATH when relative).
	Binary string
	// KVMProbeTimeout bounds the boot that proves KVM works (accel "auto").
	KVMProbeTimeout time.Duration
	// DebugConsole boots VMs whose agent accepts guest-root execs
	// (cocoond's [debug] console).
	DebugConsole bool
	// TemplateDir holds the snapshot templates VMs with a Spec.Template
	// restore from (template.go); empty turns templates off.
	TemplateDir string
	Log         *logrus.Entry
}

// Driver creates QEMU VMs.
type Driver struct {
	opts Options

	accelOnce sync.Once
	autoAccel string

	tpl *templates // nil without Options.TemplateDir
}

// New returns a QEMU driver.
func New(opts Options) *Driver {
	if opts.Binary == "" {
		opts.Binary = DefaultBinary
	}
	if opts.KVMProbeTimeout == 0 {
		opts.KVMProbeTimeout = DefaultKVMProbeTimeout
	}
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	d := &Driver{opts: opts}
	if opts.TemplateDir != "" {
		d.tpl = newTemplates(opts.TemplateDir)
	}
	return d
}

// Close ends template builds running in the background.
func (d *Driver) Close() {
	if d.tpl != nil {
		d.tpl.close()
	}
}

// Name implements vm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Usable says whether VMs of this driver can run here at all: the QEMU
// binary is on PATH (TCG runs anywhere). What runs VMs ahead of any request
// (the warm pool) asks first.
func (d *Driver) Usable() error {
	if _, err := exec.LookPath(d.opts.Binary); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// Create implements vm.Driver: it starts QEMU paused with every device, or
// restores the VM from its snapshot template (Spec.Template) and plugs the
// devices a template has none of. A VM that cannot be restored boots cold.
func (d *Driver) Create(ctx context.Context, spec *vm.Spec) (vm.VMM, error) {
	if spec.Template != "" && d.tpl != nil {
		v, err := d.restore(ctx, spec)
		if err == nil {
			return v, nil
		}
		if isRestoreFailure(err) {
			d.opts.Log.WithError(err).WithField("vm", spec.ID).Warn("restore from template failed: booting cold")
		}
	}
	return d.create(ctx, spec, nil)
}

// resolve finds QEMU, setpriv and the accelerator.
func (d *Driver) resolve(ctx context.Context, spec *vm.Spec) (bin, setpriv, accel string, err error) {
	if err := validate(spec); err != nil {
		return "", "", "", err
	}
	bin, err = exec.LookPath(d.opts.Binary)
	if err != nil {
		return "", "", "", fmt.Errorf("qemu: %w", err)
	}
	setpriv, err = exec.LookPath("setpriv")
	if err != nil {
		return "", "", "", fmt.Errorf("qemu: setpriv (util-linux) confines QEMU: %w", err)
	}
	accel = spec.Accel
	if accel == "" || accel == "auto" {
		accel = d.resolveAuto(ctx, spec)
	}
	return bin, setpriv, accel, nil
}

// create starts QEMU for spec: booting the kernel, or with c, booting a
// template or loading a clone from one.
func (d *Driver) create(ctx context.Context, spec *vm.Spec, c *clone) (vm.VMM, error) {
	bin, setpriv, accel, err := d.resolve(ctx, spec)
	if err != nil {
		return nil, err
	}
	log := d.opts.Log.WithField("vm", spec.ID)
	v := &qemuVM{log: log, paths: vmPaths(spec.RunDir), ports: map[string]int{}}
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		v.vsockCID = randomCID()
	}
	v.Supervisor = vm.NewSupervisor(vm.State{
		Driver: d.Name(), ID: spec.ID, RunDir: spec.RunDir,
		ControlSocket: v.paths.qmp, AgentSocket: v.paths.agent, AgentVsockCID: v.vsockCID,
		VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB, Accel: accel,
	}, processName, v.quit, log)
	var tokenFile string
	var vfs []string // virtiofsd's sockets: a clone plugs them after its restore
	ready := []pipeline.Step{{Name: "qmp", Run: func(ctx context.Context) (func() error, error) {
		q, err := v.connectQMP(ctx)
		if err != nil {
			// Read QEMU's log now: the unwind removes the run dir.
			return nil, fmt.Errorf("%w%s", err, v.logTail())
		}
		v.qmp = q
		return q.Close, nil
	}}}
	if c.restoring() {
		ready = append(ready, c.steps(v, spec, &vfs)...)
	}
	err = v.Launch(ctx, spec, vm.Launch{
		Pipeline: "qemu-create",
		Prepare: []pipeline.Step{{Name: "agent-token", Run: func(context.Context) (func() error, error) {
			var err error
			if c.restoring() { // the clone's agent has the template's token
				tokenFile, v.token = filepath.Join(spec.RunDir, vm.AgentTokenFile), c.token
				return nil, writeToken(spec.RunDir, c.token)
			}
			tokenFile, v.token, err = vm.NewAgentToken(spec.RunDir)
			return nil, err // the run dir's undo removes it
		}}},
		Command: func(vfsSockets []string) (*exec.Cmd, error) {
			vfs = vfsSockets
			args := commandLine(spec, accel, vfsSockets, v.vsockCID, tokenFile, d.opts.DebugConsole)
			if c != nil { // a template boot or a clone: no vhost-user device on the command line
				args = c.commandLine(spec, accel, v.vsockCID, tokenFile, d.opts.DebugConsole)
			}
			argv := confinedCommand(setpriv, bin, args)
			cmd := exec.Command(argv[0], argv[1:]...)
			if c == nil {
				for _, nic := range spec.NICs {
					cmd.ExtraFiles = append(cmd.ExtraFiles, nic.Tap)
				}
			} else if c.mem != nil { // a clone's NICs are hotplugged; its RAM is a memfd
				cmd.ExtraFiles = append(cmd.ExtraFiles, c.mem)
			}
			return cmd, nil
		},
		Ready: ready,
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

func validate(spec *vm.Spec) error {
	switch {
	case spec.ID == "" || spec.RunDir == "" || !filepath.IsAbs(spec.RunDir):
		return errors.New("qemu: spec needs an ID and an absolute RunDir")
	case spec.Kernel == "" || spec.Initramfs == "":
		return errors.New("qemu: spec needs a kernel and an initramfs")
	case spec.VCPUs == 0 || spec.MemoryMiB < 64:
		return fmt.Errorf("qemu: need at least 1 vCPU and 64 MiB (got %d, %d MiB)", spec.VCPUs, spec.MemoryMiB)
	}
	for _, nic := range spec.NICs {
		if nic.Tap == nil || nic.ID == "" || len(nic.MAC) != 6 {
			return fmt.Errorf("qemu: NIC %q needs an ID, an open tap and a MAC", nic.ID)
		}
	}
	return nil
}

// resolveAuto proves KVM by booting the guest once per driver; the stock
// guest hangs on some nested hosts even where /dev/kvm opens.
func (d *Driver) resolveAuto(ctx context.Context, spec *vm.Spec) string {
	d.accelOnce.Do(func() {
		d.autoAccel = "tcg"
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			d.opts.Log.WithError(err).Warn("KVM unavailable: running VMs with TCG software emulation (slow)")
			return
		}
		f.Close()
		took, err := d.ProbeKVM(ctx, spec)
		if err != nil {
			d.opts.Log.WithError(err).Warn("!!! KVM is present but does not boot the guest: falling back to TCG software emulation (slow); set accel = \"kvm\" or \"tcg\" to skip this probe")
			return
		}
		d.opts.Log.WithField("took", took.String()).Info("KVM boots the guest: using kvm")
		d.autoAccel = "kvm"
	})
	return d.autoAccel
}

// ProbeKVM boots a bare copy of spec with KVM and waits for the agent.
func (d *Driver) ProbeKVM(ctx context.Context, spec *vm.Spec) (time.Duration, error) {
	probe := vm.Spec{
		ID: spec.ID + "-kvmprobe", RunDir: spec.RunDir + "-kvmprobe",
		Kernel: spec.Kernel, Initramfs: spec.Initramfs, KernelArgs: spec.KernelArgs,
		VCPUs: 1, MemoryMiB: max(spec.MemoryMiB, 128), Accel: "kvm",
	}
	return vm.BootProbe(ctx, d, &probe, d.opts.KVMProbeTimeout)
}

func randomCID() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return 3 + binary.LittleEndian.Uint32(b[:])%(1<<30)
}

// Adopt implements vm.Driver: re-attach to a VM a previous cocoond started
// (vm.Supervisor.Adopt says when a VM is removed instead).
func (d *Driver) Adopt(ctx context.Context, st *vm.State) (vm.VMM, error) {
	if st.Driver != d.Name() {
		return nil, fmt.Errorf("qemu: state belongs to driver %q", st.Driver)
	}
	log := d.opts.Log.WithField("vm", st.ID)
	v := &qemuVM{log: log, paths: vmPaths(st.RunDir), vsockCID: st.AgentVsockCID}
	v.Supervisor = vm.NewSupervisor(*st, processName, v.quit, log)
	err := v.Adopt(ctx, func(ctx context.Context) (func() error, error) {
		token, err := adoptToken(st.RunDir)
		if err != nil {
			return nil, err
		}
		v.token = token
		q, err := v.connectQMP(ctx)
		if err != nil {
			return nil, err
		}
		v.qmp = q
		return q.Close, nil
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}
