package e2e

import (
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/vm/guest"
)

// BenchmarkGuestBoot measures QEMU/TCG start to a SERVING agent, against a
// baseline from the same run: the same kernel and initramfs booted with an init
// that does not exist, so QEMU exits as soon as the kernel reaches userspace.
// The ratio is what the agent (module loading, mounts, server start) adds.
//
//	make bench  (or: go test -run XXX -bench GuestBoot -benchtime 5x ./test/e2e/)
func BenchmarkGuestBoot(b *testing.B) {
	m, err := guest.Locate(guestDir(b))
	if err != nil {
		b.Fatal(err)
	}
	var agent, kernel []time.Duration
	for b.Loop() {
		share := b.TempDir()
		vm := bootGuest(b, share)
		agent = append(agent, vm.healthy)
		vm.client.Close()
		_ = vm.cmd.Process.Kill()
		<-vm.exited

		start := time.Now()
		cmd := exec.Command("qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512",
			"-nodefaults", "-nographic", "-no-reboot", "-kernel", m.KernelPath(), "-initrd", m.InitramfsPath(),
			"-append", "console=ttyS0 panic=-1 rdinit=/no-such-init init=/no-such-init",
			"-serial", "file:"+filepath.Join(share, "baseline-console.log"))
		if err := cmd.Run(); err != nil {
			b.Fatalf("baseline boot: %v", err)
		}
		kernel = append(kernel, time.Since(start))
	}
	a, k := median(agent), median(kernel)
	b.ReportMetric(a.Seconds(), "s-to-agent-median")
	b.ReportMetric(percentile(agent, 90).Seconds(), "s-to-agent-p90")
	b.ReportMetric(k.Seconds(), "s-to-userspace-median")
	b.ReportMetric(a.Seconds()/k.Seconds(), "ratio-agent/userspace")
}

func median(d []time.Duration) time.Duration { return percentile(d, 50) }

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}
