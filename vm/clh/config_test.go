package clh

import (
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/vm"
)

func TestVMConfig(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	for _, tt := range []struct {
		name string
		spec vm.Spec
		want string // the VmConfig as JSON
	}{
		{
			name: "minimal: no hotplug, no shares",
			spec: vm.Spec{ID: "a", RunDir: "/run/a", Kernel: "/k", VCPUs: 1, MemoryMiB: 128},
			want: `{"console":{"mode":"Off"},"cpus":{"boot_vcpus":1,"max_vcpus":1},"memory":{"size":134217728},` +
				`"payload":{"cmdline":"console=ttyS0 quiet panic=1 ` + vm.FastBootKernelArgs + `","kernel":"/k"},"rng":{"src":"/dev/urandom"},` +
				`"serial":{"file":"/run/a/console.pipe","mode":"File"},"vsock":{"cid":3,"socket":"/run/a/vsock.sock"}}`,
		},
		{
			name: "everything: hotplug limits, share, disk; NICs left to add-net",
			spec: vm.Spec{
				ID: "b", RunDir: "/run/b", Kernel: "/k", Initramfs: "/i", KernelArgs: []string{"cocoon.log=debug"},
				VCPUs: 2, MaxVCPUs: 8, MemoryMiB: 256, MaxMemoryMiB: 1024,
				Shares: []vm.Share{{Tag: "rootfs", Source: "/src"}},
				Disks:  []vm.Disk{{ID: "d0", Path: "/img", ReadOnly: true}},
				NICs:   []vm.NIC{{ID: "n0", Tap: os.Stdin, MAC: mac}},
			},
			want: `{"console":{"mode":"Off"},"cpus":{"boot_vcpus":2,"max_vcpus":8},` +
				`"disks":[{"id":"d0","image_type":"Raw","path":"/img","readonly":true}],` +
				`"fs":[{"id":"fs-rootfs","num_queues":1,"queue_size":1024,"socket":"/run/b/virtiofs-rootfs.sock","tag":"rootfs"}],` +
				`"memory":{"hotplug_size":805306368,"shared":true,"size":268435456},` +
				`"payload":{"cmdline":"console=ttyS0 quiet panic=1 ` + vm.FastBootKernelArgs + ` memhp_default_state=online cocoon.log=debug","initramfs":"/i","kernel":"/k"},` +
				`"rng":{"src":"/dev/urandom"},"serial":{"file":"/run/b/console.pipe","mode":"File"},"vsock":{"cid":3,"socket":"/run/b/vsock.sock"}}`,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := validate(&tt.spec); err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(vmConfig(&tt.spec))
			if string(b) != tt.want {
				t.Errorf("got\n%s\nwant\n%s", b, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := vm.Spec{ID: "a", RunDir: "/run/a", Kernel: "/k", VCPUs: 1, MemoryMiB: 128}
	for _, tt := range []struct {
		name   string
		change func(s *vm.Spec)
		want   string
	}{
		{"relative run dir", func(s *vm.Spec) { s.RunDir = "run/a" }, "absolute"},
		{"no vCPU", func(s *vm.Spec) { s.VCPUs = 0 }, "at least one vCPU"},
		{"max below boot", func(s *vm.Spec) { s.MaxVCPUs, s.VCPUs = 1, 2 }, "below vCPUs"},
		{"memory limit below memory", func(s *vm.Spec) { s.MaxMemoryMiB = 64 }, "below memory"},
		{"tcg", func(s *vm.Spec) { s.Accel = "tcg" }, "needs kvm"},
		{"share tag with a slash", func(s *vm.Spec) { s.Shares = []vm.Share{{Tag: "a/b"}} }, "not a plain name"},
		{"run dir too long for sockets", func(s *vm.Spec) { s.RunDir = "/" + strings.Repeat("x", 100) }, "too long"},
		{"NIC without tap", func(s *vm.Spec) { s.NICs = []vm.NIC{{ID: "n"}} }, "open tap"},
		{"duplicate device ids", func(s *vm.Spec) {
			s.NICs = []vm.NIC{{ID: "x", Tap: os.Stdin}}
			s.Disks = []vm.Disk{{ID: "x", Path: "/p"}}
		}, `"x" used twice`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.change(&s)
			if err := validate(&s); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("validate = %v, want %q", err, tt.want)
			}
		})
	}
	if err := validate(&ok); err != nil {
		t.Errorf("valid spec rejected: %v", err)
	}
}
