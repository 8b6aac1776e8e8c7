package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cocoon-runtime/cocoon/vm"
)

// freePort reserves a PCIe root port for a hotplugged device.
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

func (v *qemuVM) releasePort(id string) {
	v.mu.Lock()
	delete(v.ports, id)
	v.mu.Unlock()
}

// AddNet hotplugs a virtio-net device on the tap: the fd travels with getfd.
func (v *qemuVM) AddNet(ctx context.Context, nic vm.NIC) (err error) {
	if err := v.alive(); err != nil {
		return err
	}
	if nic.Tap == nil || nic.ID == "" || len(nic.MAC) != 6 {
		return errors.New("qemu: NIC needs an ID, an open tap and a MAC")
	}
	bus, err := v.freePort(nic.ID)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			v.releasePort(nic.ID)
		}
	}()
	if err := v.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": nic.ID}, nic.Tap); err != nil {
		return err
	}
	if err := v.qmp.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": nic.ID, "fd": nic.ID}, nil); err != nil {
		_ = v.qmp.Execute(ctx, "closefd", map[string]any{"fdname": nic.ID}, nil)
		return err
	}
	dev := map[string]any{"driver": "virtio-net-pci", "id": nic.ID + "-dev", "netdev": nic.ID, "mac": nic.MAC.String(), "bus": bus, "romfile": ""}
	if nic.MTU > 0 {
		dev["host_mtu"] = nic.MTU
	}
	if err := v.qmp.Execute(ctx, "device_add", dev, nil); err != nil {
		_ = v.qmp.Execute(ctx, "netdev_del", map[string]any{"id": nic.ID}, nil)
		return err
	}
	return nil
}

// RemoveNet unplugs a hotplugged NIC; the guest acknowledges the eject.
func (v *qemuVM) RemoveNet(ctx context.Context, id string) error {
	if err := v.unplug(ctx, id+"-dev", id); err != nil {
		return err
	}
	return v.qmp.Execute(ctx, "netdev_del", map[string]any{"id": id}, nil)
}

// AddDisk hotplugs a virtio-blk device backed by path.
func (v *qemuVM) AddDisk(ctx context.Context, d vm.Disk) (err error) {
	if err := v.alive(); err != nil {
		return err
	}
	bus, err := v.freePort(d.ID)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			v.releasePort(d.ID)
		}
	}()
	node := d.ID + "-node"
	blk := map[string]any{"driver": "raw", "node-name": node, "read-only": d.ReadOnly,
		"file": map[string]any{"driver": "file", "filename": d.Path}}
	if err := v.qmp.Execute(ctx, "blockdev-add", blk, nil); err != nil {
		return err
	}
	if err := v.qmp.Execute(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "id": d.ID, "drive": node, "bus": bus}, nil); err != nil {
		_ = v.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		return err
	}
	return nil
}

// RemoveDisk unplugs a hotplugged disk.
func (v *qemuVM) RemoveDisk(ctx context.Context, id string) error {
	if err := v.unplug(ctx, id, id); err != nil {
		return err
	}
	return v.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": id + "-node"}, nil)
}

// unplug removes device dev (reserved under portKey) and waits for the guest.
func (v *qemuVM) unplug(ctx context.Context, dev, portKey string) error {
	if err := v.alive(); err != nil {
		return err
	}
	v.mu.Lock()
	_, ok := v.ports[portKey]
	v.mu.Unlock()
	if !ok {
		return fmt.Errorf("qemu: %q is not a hotplugged device", portKey)
	}
	// Subscribed before device_del: QEMU empties a slot the guest never
	// powered at once, sending DEVICE_DELETED ahead of the command's reply.
	deleted := v.qmp.Subscribe("DEVICE_DELETED", matchDevice(dev))
	defer deleted.Cancel()
	if err := v.qmp.Execute(ctx, "device_del", map[string]any{"id": dev}, nil); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := deleted.Wait(wctx); err != nil {
		return fmt.Errorf("qemu: guest did not release %s: %w", dev, err)
	}
	v.releasePort(portKey)
	return nil
}

func matchDevice(id string) func(json.RawMessage) bool {
	return func(data json.RawMessage) bool {
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(data, &d) == nil && d.Device == id
	}
}

type hotpluggableCPU struct {
	Type    string         `json:"type"`
	Props   map[string]any `json:"props"`
	QOMPath string         `json:"qom-path"`
}

// Resize plugs vCPUs and memory DIMMs. Both only grow: taking them back needs
// the guest to give them up first, which it may refuse; limits below the VM's
// size are enforced inside the guest with cgroups instead.
func (v *qemuVM) Resize(ctx context.Context, vcpus uint32, memoryMiB uint64) error {
	if err := v.alive(); err != nil {
		return err
	}
	v.mu.Lock()
	curCPU, curMem := v.vcpus, v.memMiB
	v.mu.Unlock()
	if vcpus > 0 && vcpus < curCPU || memoryMiB > 0 && memoryMiB < curMem {
		return fmt.Errorf("qemu: a VM only grows (now %d vCPUs, %d MiB; asked %d, %d)", curCPU, curMem, vcpus, memoryMiB)
	}
	if vcpus > curCPU {
		if err := v.addCPUs(ctx, curCPU, vcpus); err != nil {
			return err
		}
	}
	if memoryMiB > curMem {
		if err := v.addMemory(ctx, memoryMiB-curMem); err != nil {
			return err
		}
	}
	return nil
}

func (v *qemuVM) addCPUs(ctx context.Context, cur, want uint32) error {
	for cur < want {
		var cpus []hotpluggableCPU
		if err := v.qmp.Execute(ctx, "query-hotpluggable-cpus", nil, &cpus); err != nil {
			return err
		}
		var slot *hotpluggableCPU
		for i := range cpus {
			if cpus[i].QOMPath == "" {
				slot = &cpus[i]
			}
		}
		if slot == nil {
			return fmt.Errorf("qemu: no free vCPU slot for %d vCPUs (max %d)", want, cur)
		}
		id := fmt.Sprintf("cpu%d", cur)
		dev := map[string]any{"driver": slot.Type, "id": id}
		for k, val := range slot.Props {
			dev[k] = val
		}
		if err := v.qmp.Execute(ctx, "device_add", dev, nil); err != nil {
			return err
		}
		v.mu.Lock()
		v.vcpus = cur + 1
		v.mu.Unlock()
		cur++
	}
	return nil
}

func (v *qemuVM) addMemory(ctx context.Context, mib uint64) error {
	v.mu.Lock()
	n := v.dimms
	v.mu.Unlock()
	mem, dimm := fmt.Sprintf("hpmem%d", n), fmt.Sprintf("dimm%d", n)
	// The same shared memfd backing as boot RAM, so virtiofsd can map it too.
	if err := v.qmp.Execute(ctx, "object-add", map[string]any{"qom-type": "memory-backend-memfd", "id": mem, "size": mib << 20, "share": true}, nil); err != nil {
		return err
	}
	if err := v.qmp.Execute(ctx, "device_add", map[string]any{"driver": "pc-dimm", "id": dimm, "memdev": mem}, nil); err != nil {
		_ = v.qmp.Execute(ctx, "object-del", map[string]any{"id": mem}, nil)
		return err
	}
	v.mu.Lock()
	v.dimms++
	v.memMiB += mib
	v.mu.Unlock()
	return nil
}
