package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/vm"
)

// argsAfter is every value that follows flag in args, in order.
func argsAfter(args []string, flag string) []string {
	var vals []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			vals = append(vals, args[i+1])
		}
	}
	return vals
}

func TestCommandLineKeepsAnIdlePodSmall(t *testing.T) {
	spec := &vm.Spec{ID: "x", RunDir: "/run/x", Kernel: "k", Initramfs: "i", VCPUs: 1, MemoryMiB: 128, MaxMemoryMiB: 2048}
	for _, tc := range []struct {
		accel, wantAccel string
	}{
		// TCG's translation cache is capped; QEMU's 1 GiB default fills up
		// with code a booted guest never runs again.
		{accel: "tcg", wantAccel: "tcg,tb-size=32"},
		// tb-size is a TCG property: QEMU refuses it on kvm.
		{accel: "kvm", wantAccel: "kvm"},
	} {
		t.Run(tc.accel, func(t *testing.T) {
			args := commandLine(spec, tc.accel, nil, 0, "", false)
			if got := argsAfter(args, "-accel"); !slices.Equal(got, []string{tc.wantAccel}) {
				t.Errorf("-accel %q, want exactly %q", got, tc.wantAccel)
			}
			// QEMU refuses -accel together with -machine accel=.
			for _, m := range argsAfter(args, "-machine") {
				if strings.Contains(m, "accel=") {
					t.Errorf("-machine %q names an accelerator besides -accel", m)
				}
			}
			var balloons []string
			for _, d := range argsAfter(args, "-device") {
				if strings.HasPrefix(d, "virtio-balloon-pci,") {
					balloons = append(balloons, d)
				}
			}
			if len(balloons) != 1 || !strings.Contains(balloons[0], "free-page-reporting=on") || !strings.Contains(balloons[0], "deflate-on-oom=on") {
				t.Errorf("balloon devices %q, want one with free-page-reporting=on and deflate-on-oom=on", balloons)
			}
			cmdline := strings.Fields(argsAfter(args, "-append")[0])
			if !slices.Contains(cmdline, "swiotlb=noforce") {
				t.Errorf("kernel command line %q keeps the 64 MiB bounce buffer", cmdline)
			}
		})
	}
}
