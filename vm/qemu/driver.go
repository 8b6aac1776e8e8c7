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
	v := &qemuVM{driver: d, spec: *spec, paths: vmPaths(spec.RunDir), log: log, accel: accel,
		vcpus: spec.VCPUs, memMiB: spec.MemoryMiB, ports: map[string]int{}, done: make(chan struct{})}
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		v.vsockCID = randomCID()
	}
	var vfsSockets []string
	var tokenFile string
	steps := []pipeline.Step{
		{Name: "rundir", Run: func(context.Context) (func() error, error) {
			if err := os.MkdirAll(spec.RunDir, 0o700); err != nil {
				return nil, err
			}
			return func() error { return os.RemoveAll(spec.RunDir) }, nil
		}},
		{Name: "agent-token", Run: func(context.Context) (func() error, error) {
			var err error
			if c.restoring() { // the clone's agent has the template's token
				tokenFile, v.token = filepath.Join(spec.RunDir, vm.AgentTokenFile), c.token
				return nil, writeToken(spec.RunDir, c.token)
			}
			tokenFile, v.token, err = vm.NewAgentToken(spec.RunDir)
			return nil, err // the run dir's undo removes it
		}},
		// The record exists before the processes it names, and is rewritten
		// as each starts: a cocoond killed in between leaves a run dir whose
		// processes a restart finds (vm.RemoveOrphans).
		{Name: "record", Run: func(context.Context) (func() error, error) {
			return nil, vm.SaveState(v.State())
		}},
		{Name: "virtiofsd", Run: func(ctx context.Context) (func() error, error) {
			var started []*vm.Watched
			undo := func() error {
				var errs []error
				for _, w := range started {
					errs = append(errs, w.Terminate(2*time.Second))
				}
				return errors.Join(errs...)
			}
			for _, sh := range spec.Shares {
				w, sock, err := vm.StartVirtiofsd(ctx, spec.RunDir, sh, log)
				if err != nil {
					return undo, err
				}
				started = append(started, w)
				vfsSockets = append(vfsSockets, sock)
			}
			v.helpers = started
			return undo, vm.SaveState(v.State())
		}},
		{Name: "console", Run: func(context.Context) (func() error, error) {
			c, err := vm.OpenConsole(spec.RunDir, true, log)
			if err != nil {
				return nil, err
			}
			v.console = c
			return c.Close, nil
		}},
		{Name: "qemu", Run: func(context.Context) (func() error, error) {
			logFile, err := os.OpenFile(filepath.Join(spec.RunDir, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return nil, err
			}
			defer logFile.Close()
			args := commandLine(spec, accel, vfsSockets, v.vsockCID, tokenFile, d.opts.DebugConsole)
			if c != nil {
				args = c.commandLine(spec, accel, v.vsockCID, tokenFile, d.opts.DebugConsole)
			}
			argv := confinedCommand(setpriv, bin, args)
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Stdout, cmd.Stderr = logFile, logFile
			if c == nil {
				for _, nic := range spec.NICs {
					cmd.ExtraFiles = append(cmd.ExtraFiles, nic.Tap)
				}
			} else if c.mem != nil { // a clone's NICs are hotplugged; its RAM is a memfd
				cmd.ExtraFiles = append(cmd.ExtraFiles, c.mem)
			}
			w, err := vm.StartWatched("qemu", cmd)
			if err != nil {
				return nil, err
			}
			v.mu.Lock()
			v.proc = w
			v.mu.Unlock()
			return func() error { return w.Terminate(time.Second) }, vm.SaveState(v.State())
		}},
		{Name: "qmp", Run: func(ctx context.Context) (func() error, error) {
			q, err := v.connectQMP(ctx)
			if err != nil {
				// Read QEMU's log now: the unwind removes the run dir.
				return nil, fmt.Errorf("%w%s", err, v.logTail())
			}
			v.qmp = q
			return q.Close, nil
		}},
	}
	if c.restoring() {
		steps = append(steps, c.steps(v, spec, &vfsSockets)...)
	}
	cleanup, err := pipeline.Run(pipeline.WithName(ctx, "qemu-create"), log, steps)
	if err != nil {
		return nil, fmt.Errorf("qemu: create %s: %w", spec.ID, err)
	}
	v.cleanup = cleanup
	go v.supervise()
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

// Adopt implements vm.Driver: re-attach to a VM a previous cocoond started.
func (d *Driver) Adopt(ctx context.Context, st *vm.State) (vm.VMM, error) {
	if st.Driver != d.Name() {
		return nil, fmt.Errorf("qemu: state belongs to driver %q", st.Driver)
	}
	proc, err := vm.AdoptWatched(vm.Process{Name: "qemu", Pid: st.Pid, StartTime: st.StartTime})
	if err != nil {
		if errors.Is(err, vm.ErrNotRunning) {
			if rerr := vm.RemoveDead(st); rerr != nil {
				return nil, errors.Join(err, rerr)
			}
		}
		return nil, err
	}
	token, err := adoptToken(st.RunDir)
	if err != nil {
		return nil, fmt.Errorf("qemu: adopt %s: %w", st.ID, err)
	}
	v := &qemuVM{driver: d, spec: vm.Spec{ID: st.ID, RunDir: st.RunDir}, paths: vmPaths(st.RunDir), token: token,
		log: d.opts.Log.WithField("vm", st.ID), accel: st.Accel, proc: proc, vsockCID: st.AgentVsockCID,
		vcpus: st.VCPUs, memMiB: st.MemoryMiB, ports: map[string]int{}, done: make(chan struct{}), cleanup: &pipeline.Cleanup{}}
	v.cleanup.Push("rundir", func() error { return os.RemoveAll(st.RunDir) })
	for _, h := range st.Helpers {
		w, err := vm.AdoptWatched(h)
		if err != nil {
			v.log.WithError(err).Warn("helper of adopted VM is gone")
			continue
		}
		v.helpers = append(v.helpers, w)
		v.cleanup.Push(h.Name, func() error { return w.Terminate(2 * time.Second) })
		vm.AdoptHelperLog(filepath.Join(st.RunDir, h.Name+".log"), w.Done(), v.log)
	}
	v.cleanup.Push("qemu", func() error { return proc.Terminate(time.Second) })
	// Read the console before talking to QEMU: a QEMU started just before
	// the last cocoond died may still be opening the console FIFO, which
	// blocks it (QMP included) until a reader is there.
	if c, err := vm.OpenConsole(st.RunDir, false, v.log); err == nil {
		v.console = c
		v.cleanup.Push("console", c.Close)
	} else {
		v.log.WithError(err).Warn("guest console not copied: its output is dropped")
	}
	q, err := v.connectQMP(ctx)
	if err != nil {
		return nil, fmt.Errorf("qemu: adopt %s: %w", st.ID, err)
	}
	v.qmp = q
	v.cleanup.Push("qmp", q.Close)
	go v.supervise()
	return v, nil
}
