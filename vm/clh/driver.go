// Package clh is the Cloud Hypervisor driver: one cloud-hypervisor process
// per VM, driven over its REST API (api/clh) on a unix socket we bind, with
// virtiofsd for shares and hybrid vsock to the agent.
package clh

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// Name is the driver's name in config and state.
const Name = "clh"

// DefaultBinary is looked up on PATH when Options.Binary is empty.
const DefaultBinary = "cloud-hypervisor"

// Options configure the driver.
type Options struct {
	// Binary is the cloud-hypervisor executable; a name without a slash is
	// looked up on PATH when a VM is created.
	Binary string
	// Log receives the driver's logs; nil means logrus's standard logger.
	Log *logrus.Entry
	// DebugConsole boots VMs whose agent accepts guest-root execs
	// (cocoond's [debug] console).
	DebugConsole bool
}

// Driver creates and adopts Cloud Hypervisor VMs.
type Driver struct {
	binary       string
	log          *logrus.Entry
	debugConsole bool
}

var _ vm.Driver = (*Driver)(nil)

// New returns the driver.
func New(opts Options) *Driver {
	d := &Driver{binary: opts.Binary, log: opts.Log, debugConsole: opts.DebugConsole}
	if d.binary == "" {
		d.binary = DefaultBinary
	}
	if d.log == nil {
		d.log = logrus.NewEntry(logrus.StandardLogger())
	}
	d.log = d.log.WithField("driver", Name)
	return d
}

// Name implements vm.Driver.
func (d *Driver) Name() string { return Name }

// Create implements vm.Driver: it leaves the VM created, with its NICs, but
// not booted.
func (d *Driver) Create(ctx context.Context, spec *vm.Spec) (vm.VMM, error) {
	v, err := d.create(ctx, spec)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return v, nil
}

func (d *Driver) create(ctx context.Context, spec *vm.Spec) (*VMM, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	v, steps, err := d.launch(spec)
	if err != nil {
		return nil, err
	}
	steps = append(steps,
		pipeline.Step{Name: "vm.create", Run: func(ctx context.Context) (func() error, error) {
			resp, err := v.api.c.CreateVM(ctx, vmConfig(withAgentPolicy(spec, d.debugConsole)))
			// Nothing to undo: killing the process discards the VM.
			return nil, check("vm.create", resp, err, nil)
		}},
		pipeline.Step{Name: "check created", Run: func(ctx context.Context) (func() error, error) {
			return nil, v.api.expectState(ctx, clhapi.Created)
		}},
	)
	for _, n := range spec.NICs {
		steps = append(steps, pipeline.Step{Name: "vm.add-net " + n.ID, Run: func(ctx context.Context) (func() error, error) {
			// Before boot CH answers 204 and no device info.
			return nil, v.api.putWithFiles(ctx, "vm.add-net", netConfig(n), []*os.File{n.Tap}, nil)
		}})
	}
	if err := v.run(pipeline.WithName(ctx, "clh-create"), steps); err != nil {
		return nil, err
	}
	return v, nil
}

// launch prepares a VMM for spec and the steps that bring its process up to
// an answering, VM-less API: run dir, virtiofsd per share, API socket,
// cloud-hypervisor, ping. Create and Restore continue from there.
func (d *Driver) launch(spec *vm.Spec) (*VMM, []pipeline.Step, error) {
	bin, err := exec.LookPath(d.binary)
	if err != nil {
		return nil, nil, fmt.Errorf("clh: %w", err)
	}
	maxV, maxM := spec.MaxVCPUs, spec.MaxMemoryMiB
	if maxV == 0 {
		maxV = spec.VCPUs
	}
	if maxM == 0 {
		maxM = spec.MemoryMiB
	}
	v := &VMM{
		log: d.log.WithField("vm", spec.ID), id: spec.ID, runDir: spec.RunDir,
		api: newAPI(apiSocket(spec.RunDir)), vsock: vsockSocket(spec.RunDir),
		vcpus: spec.VCPUs, maxVCPUs: maxV, memMiB: spec.MemoryMiB, maxMemMiB: maxM,
	}
	var listener *net.UnixListener
	// The record exists before the processes it names and is rewritten as
	// each starts, so a restart after a crash here finds them.
	steps := []pipeline.Step{{Name: "run dir", Run: func(context.Context) (func() error, error) {
		undo, err := makeRunDir(spec.RunDir)
		if err != nil {
			return undo, err
		}
		return undo, vm.SaveState(v.State())
	}}, {Name: "console", Run: func(context.Context) (func() error, error) {
		// CH opens the serial "file", a FIFO we copy into a capped log, at
		// vm.create or vm.restore: the reader must be there first.
		c, err := vm.OpenConsole(spec.RunDir, true, v.log)
		if err != nil {
			return nil, err
		}
		return c.Close, nil
	}}}
	for _, sh := range spec.Shares {
		steps = append(steps, pipeline.Step{Name: "virtiofsd " + sh.Tag, Run: func(ctx context.Context) (func() error, error) {
			w, sock, err := vm.StartVirtiofsd(ctx, spec.RunDir, sh, v.log)
			if err != nil {
				return nil, err
			}
			v.mu.Lock()
			v.helpers = append(v.helpers, w)
			v.mu.Unlock()
			return func() error {
				return errors.Join(w.Terminate(time.Second), removeIfExists(sock))
			}, vm.SaveState(v.State())
		}})
	}
	steps = append(steps,
		pipeline.Step{Name: "api socket", Run: func(context.Context) (func() error, error) {
			// Bound by us and inherited as fd 3: it accepts connections
			// before CH runs, so there is no socket file to wait for.
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: v.api.sock, Net: "unix"})
			if err != nil {
				return nil, err
			}
			// Closing our copy once CH holds it must not unlink CH's socket.
			l.SetUnlinkOnClose(false)
			listener = l
			return func() error {
				_ = listener.Close()
				return removeIfExists(v.api.sock)
			}, nil
		}},
		pipeline.Step{Name: "spawn cloud-hypervisor", Run: func(context.Context) (func() error, error) {
			w, err := spawn(bin, spec.RunDir, listener)
			if err != nil {
				return nil, err
			}
			v.mu.Lock()
			v.proc = w
			v.mu.Unlock()
			v.log.WithField("pid", w.Pid).Debug("cloud-hypervisor started")
			return func() error { return w.Kill() }, vm.SaveState(v.State())
		}},
		pipeline.Step{Name: "vmm.ping", Run: func(ctx context.Context) (func() error, error) {
			pong, err := v.api.ping(ctx, v.proc.Done())
			if err != nil {
				return nil, fmt.Errorf("%w (see %s)", err, filepath.Join(spec.RunDir, vmmLogName))
			}
			v.log.WithField("version", pong.Version).Debug("cloud-hypervisor API up")
			return nil, nil
		}},
	)
	return v, steps, nil
}

// spawn starts cloud-hypervisor serving its API on the listener (fd 3), in
// its own session, logging to the run dir. Our copy of the listener is
// closed afterwards: only CH accepts on it from then on.
func spawn(bin, runDir string, l *net.UnixListener) (*vm.Watched, error) {
	lf, err := l.File()
	_ = l.Close()
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	logFile, err := os.OpenFile(filepath.Join(runDir, vmmLogName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--api-socket", "fd=3")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Dir = "/"
	return vm.StartWatched("cloud-hypervisor", cmd)
}

// makeRunDir creates the run dir. One left empty by a crash is taken over;
// a non-empty one is refused so the undo never deletes files we did not write.
func makeRunDir(dir string) (func() error, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o711); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		entries, rerr := os.ReadDir(dir)
		if rerr != nil || len(entries) > 0 {
			return nil, fmt.Errorf("run dir %s already exists and is not empty", dir)
		}
	}
	return func() error { return os.RemoveAll(dir) }, nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Adopt implements vm.Driver. It returns a working VMM or nothing: a VM that
// is half gone (CH or a virtiofsd dead, API silent, guest shut down) is torn
// down, its leftovers removed, and the error wraps vm.ErrNotRunning, since
// without a VMM the caller could not clean it up.
func (d *Driver) Adopt(ctx context.Context, st *vm.State) (vm.VMM, error) {
	v, err := d.adopt(ctx, st)
	if err != nil {
		return nil, err
	}
	return v, nil
}

func (d *Driver) adopt(ctx context.Context, st *vm.State) (*VMM, error) {
	if st.Driver != Name {
		return nil, fmt.Errorf("clh: cannot adopt a %q VM", st.Driver)
	}
	if st.RunDir == "" || st.ControlSocket == "" {
		return nil, fmt.Errorf("clh: state of %s lacks run dir or API socket", st.ID)
	}
	v := &VMM{
		log: d.log.WithField("vm", st.ID), id: st.ID, runDir: st.RunDir,
		api: newAPI(st.ControlSocket), vsock: st.AgentSocket,
		vcpus: st.VCPUs, memMiB: st.MemoryMiB, cleanup: &pipeline.Cleanup{},
	}
	if v.vsock == "" {
		v.vsock = vsockSocket(st.RunDir)
	}
	runDir := st.RunDir
	v.cleanup.Push("run dir", func() error { return os.RemoveAll(runDir) })
	var gone []error
	for _, h := range st.Helpers {
		w, err := vm.AdoptWatched(h)
		if err != nil {
			gone = append(gone, err)
			continue
		}
		v.helpers = append(v.helpers, w)
		v.cleanup.Push(h.Name, func() error { return w.Terminate(time.Second) })
		vm.AdoptHelperLog(filepath.Join(runDir, h.Name+".log"), w.Done(), v.log)
	}
	proc, err := vm.AdoptWatched(vm.Process{Name: "cloud-hypervisor", Pid: st.Pid, StartTime: st.StartTime})
	if err != nil {
		gone = append(gone, err)
	} else {
		v.proc = proc
		v.cleanup.Push("cloud-hypervisor", func() error { return proc.Kill() })
	}
	if len(gone) > 0 {
		return nil, v.abandon(errors.Join(gone...))
	}

	// Read the console before talking to the VMM: one started just before
	// the last cocoond died may be blocked opening the console FIFO.
	if c, err := vm.OpenConsole(runDir, false, v.log); err == nil {
		v.cleanup.Push("console", c.Close)
	} else {
		v.log.WithError(err).Warn("guest console not copied: its output is dropped")
	}
	info, err := v.adoptInfo(ctx)
	if err != nil {
		if ctx.Err() != nil {
			// Our caller gave up, the VM did not: leave it for the next try.
			return nil, fmt.Errorf("clh: adopt %s: %w", st.ID, err)
		}
		return nil, v.abandon(fmt.Errorf("cloud-hypervisor (pid %d) API: %w: %w", st.Pid, err, vm.ErrNotRunning))
	}
	if info.State == clhapi.Shutdown {
		return nil, v.abandon(fmt.Errorf("guest is shut down: %w", vm.ErrNotRunning))
	}
	if c := info.Config.Cpus; c != nil {
		v.maxVCPUs = uint32(c.MaxVcpus)
	}
	if m := info.Config.Memory; m != nil {
		hot := int64(0)
		if m.HotplugSize != nil {
			hot = *m.HotplugSize
		}
		v.maxMemMiB = uint64((m.Size + hot) / mib)
	}
	v.superviseHelpers()
	v.log.WithFields(logrus.Fields{"pid": st.Pid, "state": info.State}).Info("adopted VM")
	return v, nil
}

func (v *VMM) adoptInfo(ctx context.Context) (*clhapi.VmInfo, error) {
	if _, err := v.api.ping(ctx, v.proc.Done()); err != nil {
		return nil, err
	}
	return v.api.info(ctx)
}

// abandon tears down what is left of a VM that cannot be adopted.
func (v *VMM) abandon(why error) error {
	v.log.WithError(why).Warn("VM cannot be adopted, removing what is left of it")
	return errors.Join(fmt.Errorf("clh: adopt %s: %w", v.id, why), v.cleanup.Unwind(v.log))
}

// run runs steps and keeps the cleanup stack for Stop.
func (v *VMM) run(ctx context.Context, steps []pipeline.Step) error {
	c, err := pipeline.Run(ctx, v.log, steps)
	if err != nil {
		return fmt.Errorf("clh: %s: %w", v.id, err)
	}
	v.cleanup = c
	v.superviseHelpers()
	return nil
}
