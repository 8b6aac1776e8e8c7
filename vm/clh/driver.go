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

// Usable says whether VMs of this driver can run here at all: the binary is
// on PATH and /dev/kvm opens (Cloud Hypervisor has no emulation). What runs
// VMs ahead of any request (the warm pool) asks first.
func (d *Driver) Usable() error {
	if _, err := exec.LookPath(d.binary); err != nil {
		return fmt.Errorf("clh: %w", err)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("clh: needs KVM: %w", err)
	}
	return f.Close()
}

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
	v, l, err := d.launch(spec)
	if err != nil {
		return nil, err
	}
	l.Pipeline = "clh-create"
	l.Ready = append(l.Ready,
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
		l.Ready = append(l.Ready, pipeline.Step{Name: "vm.add-net " + n.ID, Run: func(ctx context.Context) (func() error, error) {
			// Before boot CH answers 204 and no device info.
			return nil, v.api.putWithFiles(ctx, "vm.add-net", netConfig(n), []*os.File{n.Tap}, nil)
		}})
	}
	if err := v.Launch(ctx, spec, l); err != nil {
		return nil, err
	}
	return v, nil
}

// launch prepares a VMM for spec and what brings its process up to an
// answering, VM-less API (the supervisor adds run dir, console and
// virtiofsd): API socket, cloud-hypervisor, ping. Create and Restore
// continue from there.
func (d *Driver) launch(spec *vm.Spec) (*VMM, vm.Launch, error) {
	bin, err := exec.LookPath(d.binary)
	if err != nil {
		return nil, vm.Launch{}, fmt.Errorf("clh: %w", err)
	}
	maxV, maxM := spec.MaxVCPUs, spec.MaxMemoryMiB
	if maxV == 0 {
		maxV = spec.VCPUs
	}
	if maxM == 0 {
		maxM = spec.MemoryMiB
	}
	log := d.log.WithField("vm", spec.ID)
	v := &VMM{log: log, api: newAPI(apiSocket(spec.RunDir)), vsock: vsockSocket(spec.RunDir), maxVCPUs: maxV, maxMemMiB: maxM}
	v.Supervisor = vm.NewSupervisor(vm.State{
		Driver: Name, ID: spec.ID, RunDir: spec.RunDir, ControlSocket: v.api.sock, AgentSocket: v.vsock,
		VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB,
	}, processName, v.shutdown, log)
	// Our copy of the API socket, until cloud-hypervisor holds its own.
	var listener *os.File
	release := func() error {
		if listener == nil {
			return nil
		}
		err := listener.Close()
		listener = nil
		return err
	}
	return v, vm.Launch{
		Prepare: []pipeline.Step{{Name: "api socket", Run: func(context.Context) (func() error, error) {
			// Bound by us and inherited as fd 3: it accepts connections
			// before CH runs, so there is no socket file to wait for.
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: v.api.sock, Net: "unix"})
			if err != nil {
				return nil, err
			}
			// Closing our copy once CH holds it must not unlink CH's socket.
			l.SetUnlinkOnClose(false)
			listener, err = l.File()
			_ = l.Close()
			return func() error { return errors.Join(release(), removeIfExists(v.api.sock)) }, err
		}}},
		Command: func([]string) (*exec.Cmd, error) {
			cmd := exec.Command(bin, "--api-socket", "fd=3")
			cmd.ExtraFiles = []*os.File{listener}
			return cmd, nil
		},
		Ready: []pipeline.Step{{Name: "vmm.ping", Run: func(ctx context.Context) (func() error, error) {
			if err := release(); err != nil {
				return nil, err
			}
			pong, err := v.api.ping(ctx, v.Done())
			if err != nil {
				return nil, fmt.Errorf("%w (see %s)", err, vm.VMMLog(spec.RunDir, processName))
			}
			v.log.WithField("version", pong.Version).Debug("cloud-hypervisor API up")
			return nil, nil
		}}},
	}, nil
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
// without a VMM the caller could not clean it up (vm.Supervisor.Adopt).
func (d *Driver) Adopt(ctx context.Context, st *vm.State) (vm.VMM, error) {
	if st.Driver != Name {
		return nil, fmt.Errorf("clh: cannot adopt a %q VM", st.Driver)
	}
	if st.ControlSocket == "" {
		return nil, fmt.Errorf("clh: state of %s lacks the API socket", st.ID)
	}
	log := d.log.WithField("vm", st.ID)
	v := &VMM{log: log, api: newAPI(st.ControlSocket), vsock: st.AgentSocket}
	if v.vsock == "" {
		v.vsock = vsockSocket(st.RunDir)
	}
	v.Supervisor = vm.NewSupervisor(*st, processName, v.shutdown, log)
	if err := v.Adopt(ctx, v.reattach); err != nil {
		return nil, err
	}
	return v, nil
}

// reattach checks an adopted VM is still there and reads its limits.
func (v *VMM) reattach(ctx context.Context) (func() error, error) {
	if _, err := v.api.ping(ctx, v.Done()); err != nil {
		return nil, err
	}
	info, err := v.api.info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State == clhapi.Shutdown {
		return nil, fmt.Errorf("guest is shut down: %w", vm.ErrNotRunning)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
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
	return nil, nil
}
