package sandbox

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/config"
)

func TestFitResources(t *testing.T) {
	t.Parallel()
	h := config.Handler{VCPUs: 1, MaxVCPUs: 4, MemoryMiB: 256, MaxMemoryMiB: 2048}
	for _, tc := range []struct {
		name     string
		vcpus    uint32
		mem      uint64
		res      *runtimeapi.LinuxContainerResources
		wantCPUs uint32
		wantMem  uint64
	}{
		{"no limits", 1, 256, nil, 1, 256},
		{"limits the VM already fits", 2, 512, &runtimeapi.LinuxContainerResources{CpuQuota: 50000, CpuPeriod: 100000, MemoryLimitInBytes: 64 << 20}, 2, 512},
		{"1.5 cores need 2 vCPUs", 1, 256, &runtimeapi.LinuxContainerResources{CpuQuota: 150000, CpuPeriod: 100000}, 2, 256},
		{"memory limit plus the guest's share", 1, 256, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 400 << 20}, 1, 400 + guestOverheadMiB},
		{"capped at the hotplug limits", 1, 256, &runtimeapi.LinuxContainerResources{CpuQuota: 800000, CpuPeriod: 100000, MemoryLimitInBytes: 8 << 30}, 4, 2048},
		{"quota without period is no limit", 1, 256, &runtimeapi.LinuxContainerResources{CpuQuota: 800000}, 1, 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cpus, mem := fitResources(tc.vcpus, tc.mem, h, tc.res)
			if cpus != tc.wantCPUs || mem != tc.wantMem {
				t.Errorf("fit = %d vCPUs %d MiB, want %d, %d", cpus, mem, tc.wantCPUs, tc.wantMem)
			}
		})
	}
}
