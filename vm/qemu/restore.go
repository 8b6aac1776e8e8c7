package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// clone is what a VM restored from a template starts from.
type clone struct {
	name  string
	dir   string
	state *os.File // the migration stream, open before anything can replace it
	token []byte
}

// restore creates a VM from its template, or says why it cannot:
// errNoTemplate when there is none for this spec yet (a build is started),
// any other error when the restore itself failed (the template is dropped
// so the next VM rebuilds it). Either way the caller boots the VM cold.
func (d *Driver) restore(ctx context.Context, spec *vm.Spec) (vm.VMM, error) {
	d.tpl.reclaim()
	bin, _, accel, err := d.resolve(ctx, spec)
	if err != nil {
		return nil, err
	}
	key, err := templateKey(bin, spec, accel, hostHasVsock(), d.opts.DebugConsole)
	if err != nil {
		return nil, err
	}
	name := spec.Template
	dir, ok := d.tpl.lookup(name, key)
	if !ok {
		buildSpec := *spec
		d.tpl.startBuild(name, func(ctx context.Context) error { return d.buildTemplate(ctx, &buildSpec, key) },
			func(err error) { d.opts.Log.WithError(err).Warn("template build failed: VMs boot cold") })
		return nil, fmt.Errorf("template %s: %w", name, errNoTemplate)
	}
	c, err := openClone(name, dir)
	if err != nil {
		return nil, err
	}
	defer c.state.Close()
	v, err := d.create(ctx, spec, c)
	if err != nil && ctx.Err() == nil {
		d.tpl.remove(name)
	}
	return v, err
}

func openClone(name, dir string) (*clone, error) {
	tok, err := vm.ReadAgentToken(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, templateStateFile), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &clone{name: name, dir: dir, state: f, token: tok}, nil
}

// commandLine is the template's command line with this VM's backends (run
// dir, vsock CID), waiting for the migration stream (-incoming defer).
func (c *clone) commandLine(spec *vm.Spec, accel string, vsockCID uint32, tokenFile string, debugConsole bool) []string {
	t := templateSpec(spec, spec.ID, spec.RunDir)
	return append(commandLine(&t, accel, nil, vsockCID, tokenFile, debugConsole), "-incoming", "defer")
}

// steps run after QMP is up: load the template's state, then plug the
// devices the template has none of. The guest runs (Start) after them and
// finds the devices plugged; Start waits until it has taken them.
func (c *clone) steps(v *qemuVM, spec *vm.Spec, vfsSockets *[]string) []pipeline.Step {
	return []pipeline.Step{
		{Name: "incoming", Run: func(ctx context.Context) (func() error, error) {
			return nil, v.loadState(ctx, c.state)
		}},
		{Name: "plug", Run: func(ctx context.Context) (func() error, error) {
			var devs []string
			for i, sh := range spec.Shares {
				dev, err := v.plugShare(ctx, fmt.Sprintf("vfs%d", i), sh.Tag, (*vfsSockets)[i])
				if err != nil {
					return nil, err
				}
				devs = append(devs, dev)
			}
			for _, nic := range spec.NICs {
				dev, err := v.plugNIC(ctx, nic)
				if err != nil {
					return nil, err
				}
				devs = append(devs, dev)
			}
			v.afterStart = func(ctx context.Context) error { return v.waitDriversReady(ctx, devs) }
			return nil, nil // QEMU's undo takes the devices with it
		}},
	}
}

// loadState feeds the migration stream to a QEMU started with -incoming
// defer and waits until it has loaded (QEMU exits when a load fails).
func (v *qemuVM) loadState(ctx context.Context, state *os.File) error {
	if err := v.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "tplstate"}, state); err != nil {
		return err
	}
	if err := v.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:tplstate"}, nil); err != nil {
		return fmt.Errorf("%w%s", err, v.logTail())
	}
	for {
		var st struct {
			Status string `json:"status"`
		}
		if err := v.qmp.Execute(ctx, "query-status", nil, &st); err != nil {
			return fmt.Errorf("loading the template: %w%s", err, v.logTail())
		}
		switch st.Status {
		case "inmigrate":
		case "paused", "prelaunch":
			return nil
		default:
			return fmt.Errorf("loading the template: QEMU is %s%s", st.Status, v.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.done:
			return fmt.Errorf("loading the template: %w%s", v.err, v.logTail())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// plugShare attaches a virtio-fs device on a free root port. QEMU 7.2
// cannot migrate vhost-user-fs, so a template has none and every clone gets
// its own here, served by its own virtiofsd.
func (v *qemuVM) plugShare(ctx context.Context, id, tag, socket string) (string, error) {
	bus, err := v.freePort(id)
	if err != nil {
		return "", err
	}
	chardev := map[string]any{"id": id, "backend": map[string]any{"type": "socket", "data": map[string]any{
		"addr": map[string]any{"type": "unix", "data": map[string]any{"path": socket}}, "server": false}}}
	if err := v.qmp.Execute(ctx, "chardev-add", chardev, nil); err != nil {
		return "", err
	}
	dev := id + "-dev"
	err = v.qmp.Execute(ctx, "device_add", map[string]any{"driver": "vhost-user-fs-pci", "id": dev, "chardev": id,
		"tag": tag, "queue-size": 1024, "bus": bus}, nil)
	return dev, err
}

// plugNIC attaches the pod's NIC on a free root port: its MAC is the pod's
// (the agent finds the interface by it), and its tap travels with getfd.
func (v *qemuVM) plugNIC(ctx context.Context, nic vm.NIC) (string, error) {
	bus, err := v.freePort(nic.ID)
	if err != nil {
		return "", err
	}
	if err := v.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": nic.ID}, nic.Tap); err != nil {
		return "", err
	}
	if err := v.qmp.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": nic.ID, "fd": nic.ID}, nil); err != nil {
		return "", err
	}
	dev := map[string]any{"driver": "virtio-net-pci", "id": nic.ID + "-dev", "netdev": nic.ID, "mac": nic.MAC.String(), "bus": bus, "romfile": ""}
	if nic.MTU > 0 {
		dev["host_mtu"] = nic.MTU
	}
	return nic.ID + "-dev", v.qmp.Execute(ctx, "device_add", dev, nil)
}

// waitDriversReady waits until the guest's drivers have taken the plugged
// devices (virtio status DRIVER_OK): only then can the agent mount the share
// or find the NIC.
func (v *qemuVM) waitDriversReady(ctx context.Context, devs []string) error {
	for _, dev := range devs {
		for {
			var st struct {
				Status struct {
					Statuses []string `json:"statuses"`
				} `json:"status"`
			}
			if err := v.qmp.Execute(ctx, "x-query-virtio-status", map[string]any{"path": "/machine/peripheral/" + dev + "/virtio-backend"}, &st); err != nil {
				return err
			}
			if driverOK(st.Status.Statuses) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("guest did not take %s: %w", dev, ctx.Err())
			case <-v.done:
				return v.err
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

func driverOK(statuses []string) bool {
	for _, s := range statuses {
		if strings.HasPrefix(s, "VIRTIO_CONFIG_S_DRIVER_OK") {
			return true
		}
	}
	return false
}

// isRestoreFailure tells a restore that went wrong from one there was no
// template for.
func isRestoreFailure(err error) bool { return err != nil && !errors.Is(err, errNoTemplate) }
