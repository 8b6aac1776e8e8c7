package qemu

import (
	"context"
	"fmt"
	"path"

	"github.com/cocoon-runtime/cocoon/vm"
)

type hotpluggableCPU struct {
	Type    string         `json:"type"`
	Props   map[string]any `json:"props"`
	QOMPath string         `json:"qom-path"`
}

// Resize plugs vCPUs and memory DIMMs. Both only grow: taking them back needs
// the guest to give them up first, which it may refuse; limits below the VM's
// size are enforced inside the guest with cgroups instead.
func (v *qemuVM) Resize(ctx context.Context, vcpus uint32, memoryMiB uint64) error {
	if err := v.Err(); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.State()
	curCPU, curMem := st.VCPUs, st.MemoryMiB
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
		taken := map[string]bool{} // ids of plugged vCPUs (/machine/peripheral/<id>)
		for i := range cpus {
			if cpus[i].QOMPath == "" {
				slot = &cpus[i]
			} else {
				taken[path.Base(cpus[i].QOMPath)] = true
			}
		}
		if slot == nil {
			return fmt.Errorf("qemu: no free vCPU slot for %d vCPUs (max %d)", want, cur)
		}
		// Named from what QEMU has, not from cur alone: a record that lags
		// QEMU (cocoond died after a plug, before the record) would name a
		// vCPU that exists, and QEMU refuses a duplicate id.
		n := cur
		for taken[fmt.Sprintf("cpu%d", n)] {
			n++
		}
		id := fmt.Sprintf("cpu%d", n)
		dev := map[string]any{"driver": slot.Type, "id": id}
		for k, val := range slot.Props {
			dev[k] = val
		}
		if err := v.qmp.Execute(ctx, "device_add", dev, nil); err != nil {
			return err
		}
		cur++
		v.UpdateState(func(st *vm.State) { st.VCPUs = cur })
	}
	return nil
}

// memoryDevice is an entry of query-memory-devices.
type memoryDevice struct {
	Type string `json:"type"`
	Data struct {
		ID string `json:"id"`
	} `json:"data"`
}

// nextDIMM is the lowest N for which the VM has neither a dimm<N> device nor
// an hpmem<N> memory backend. QEMU is asked rather than a counter kept: a
// counter would restart at 0 after cocoond re-adopts the VM, and the next
// resize would reuse a name. The backends count too: a cocoond killed between
// object-add and device_add leaves an hpmem<N> with no DIMM, and QEMU refuses
// a second object of that id.
func (v *qemuVM) nextDIMM(ctx context.Context) (int, error) {
	var devs []memoryDevice
	if err := v.qmp.Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		return 0, err
	}
	var backends []struct {
		ID string `json:"id"`
	}
	if err := v.qmp.Execute(ctx, "query-memdev", nil, &backends); err != nil {
		return 0, err
	}
	taken := map[string]bool{}
	for _, d := range devs {
		taken[d.Data.ID] = true
	}
	for _, b := range backends {
		taken[b.ID] = true
	}
	n := 0
	for taken[fmt.Sprintf("dimm%d", n)] || taken[fmt.Sprintf("hpmem%d", n)] {
		n++
	}
	return n, nil
}

func (v *qemuVM) addMemory(ctx context.Context, mib uint64) error {
	n, err := v.nextDIMM(ctx)
	if err != nil {
		return err
	}
	mem, dimm := fmt.Sprintf("hpmem%d", n), fmt.Sprintf("dimm%d", n)
	// The same shared memfd backing as boot RAM, so virtiofsd can map it too.
	if err := v.qmp.Execute(ctx, "object-add", map[string]any{"qom-type": "memory-backend-memfd", "id": mem, "size": mib << 20, "share": true}, nil); err != nil {
		return err
	}
	if err := v.qmp.Execute(ctx, "device_add", map[string]any{"driver": "pc-dimm", "id": dimm, "memdev": mem}, nil); err != nil {
		_ = v.qmp.Execute(ctx, "object-del", map[string]any{"id": mem}, nil)
		return err
	}
	v.UpdateState(func(st *vm.State) { st.MemoryMiB += mib })
	return nil
}
