package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// clone is how a template VM or a VM restored from one starts. Guest RAM is
// a file, not QEMU's own memfd: the template's is saved as a sparse file
// (templateMemFile) and left out of the migration stream (x-ignore-shared),
// and each clone's is a memfd of its own that cocoond fills with the
// template's pages before QEMU maps it. vhost-user-fs needs RAM that
// virtiofsd can map too, so a clone's RAM is a shared mapping of a file of
// its own: a private mapping of the template file would keep the pages a
// clone never writes shared between clones, but virtiofsd would see the
// template's bytes where the guest wrote its own.
type clone struct {
	// memPath is the template build's RAM file; a clone's RAM is mem.
	memPath string
	mem     *os.File
	// state is a clone's migration stream, open before anything can
	// replace it; nil while building a template.
	state *os.File
	token []byte
	// copied delivers the outcome of filling mem, which runs while QEMU
	// starts (QEMU maps the memfd but reads no guest RAM before the state
	// load); waited says it was received.
	copied  chan error
	waited  bool
	copyErr error
}

// waitCopy waits until mem holds the template's RAM.
func (c *clone) waitCopy(ctx context.Context) error {
	if c.waited {
		return c.copyErr
	}
	select {
	case err := <-c.copied:
		c.waited, c.copyErr = true, err
		if err != nil {
			return fmt.Errorf("copying the template's RAM: %w", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// restoring says a VM is a clone (it loads a template's state).
func (c *clone) restoring() bool { return c != nil && c.state != nil }

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
	c, err := openClone(dir, spec.MemoryMiB)
	if err != nil {
		return nil, err
	}
	defer c.close()
	v, err := d.create(ctx, spec, c)
	if err != nil && ctx.Err() == nil {
		d.tpl.remove(name)
	}
	return v, err
}

// openClone opens a template's state and token, and makes the clone's RAM:
// a memfd holding a copy of the template's RAM file, holes left holes.
func openClone(dir string, memMiB uint64) (_ *clone, err error) {
	c := &clone{}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if c.token, err = vm.ReadAgentToken(dir); err != nil {
		return nil, err
	}
	if c.state, err = os.OpenFile(filepath.Join(dir, templateStateFile), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err != nil {
		return nil, err
	}
	src, err := os.OpenFile(filepath.Join(dir, templateMemFile), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate("cocoon-guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	c.mem = os.NewFile(uintptr(fd), "cocoon-guest-ram")
	if err := c.mem.Truncate(int64(memMiB) << 20); err != nil {
		src.Close()
		return nil, err
	}
	c.copied = make(chan error, 1)
	go func() {
		defer src.Close()
		c.copied <- copySparse(c.mem, src)
	}()
	return c, nil
}

func (c *clone) close() {
	if c.copied != nil && !c.waited {
		_ = c.waitCopy(context.Background()) // the copy writes to mem: let it end first
	}
	for _, f := range []*os.File{c.state, c.mem} {
		if f != nil {
			f.Close()
		}
	}
}

// copySparse copies src's data extents into dst at the same offsets: the
// pages the template's guest never touched stay holes, which cost a clone
// nothing until its guest uses them.
func copySparse(dst, src *os.File) error {
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for pos := data; pos < hole; {
			// copy_file_range does not cross from a disk filesystem to a
			// memfd (EXDEV): plain reads and writes.
			n, err := src.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if n == 0 && err != nil {
				return err
			}
			if _, err := dst.WriteAt(buf[:n], pos); err != nil {
				return err
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}

// commandLine is the template's command line with this VM's backends (run
// dir, vsock CID, RAM file). A clone waits for the migration stream
// (-incoming defer).
func (c *clone) commandLine(spec *vm.Spec, accel string, vsockCID uint32, tokenFile string, debugConsole bool) []string {
	t := templateSpec(spec, spec.ID, spec.RunDir)
	memPath := c.memPath
	if c.mem != nil {
		memPath = fmt.Sprintf("/proc/self/fd/%d", fdBase) // the only ExtraFile a clone has
	}
	args := withMemoryFile(commandLine(&t, accel, nil, vsockCID, tokenFile, debugConsole), memPath)
	if c.restoring() {
		args = append(args, "-incoming", "defer")
	}
	return args
}

// withMemoryFile backs guest RAM with the file at path instead of a memfd
// QEMU creates, keeping every other option of the backend.
func withMemoryFile(args []string, path string) []string {
	const memfd = "memory-backend-memfd,id=mem,"
	out := slices.Clone(args)
	for i, a := range out {
		if rest, ok := strings.CutPrefix(a, memfd); ok {
			out[i] = "memory-backend-file,id=mem,mem-path=" + path + "," + rest
		}
	}
	return out
}

// steps run after QMP is up: load the template's state, then plug the
// devices the template has none of. The guest runs (Start) after them and
// finds the devices plugged; Start waits until it has taken them.
func (c *clone) steps(v *qemuVM, spec *vm.Spec, vfsSockets *[]string) []pipeline.Step {
	return []pipeline.Step{
		{Name: "incoming", Run: func(ctx context.Context) (func() error, error) {
			if err := c.waitCopy(ctx); err != nil {
				return nil, err
			}
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
	if err := v.ignoreSharedRAM(ctx); err != nil {
		return err
	}
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
		case <-v.Done():
			return fmt.Errorf("loading the template: %w%s", v.Err(), v.logTail())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// freePort takes a free hotplug root port for the device id.
func (v *qemuVM) freePort(id string) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, dup := v.ports[id]; dup {
		return "", fmt.Errorf("device %q already exists", id)
	}
	used := map[int]bool{}
	for _, p := range v.ports {
		used[p] = true
	}
	for i := range hotplugPorts {
		if !used[i] {
			v.ports[id] = i
			return fmt.Sprintf("hp%d", i), nil
		}
	}
	return "", fmt.Errorf("all %d hotplug ports are in use", hotplugPorts)
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
			case <-v.Done():
				return v.Err()
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
