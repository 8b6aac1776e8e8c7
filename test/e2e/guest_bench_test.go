package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
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

// BenchmarkGuestContainerStart measures the guest's side of pod and container
// start under QEMU/TCG, each as the host sees it over ttRPC: CreateSandbox (share
// mount, hostname, DNS), the pod's first container (CreateContainer +
// StartContainer, paying the guest's one-time costs) and its second. The
// containers carry the default seccomp profile cocoond gives a CRI container.
// One fresh VM per iteration; the medians are reported. The agent logs at
// info, as in a pod; COCOON_GUEST_LOG=debug logs the agent's own step
// timings instead (the console output slows the guest down).
//
//	go test -run XXX -bench GuestContainerStart -benchtime 5x ./test/e2e/
func BenchmarkGuestContainerStart(b *testing.B) {
	level := cmp.Or(os.Getenv("COCOON_GUEST_LOG"), "info")
	var sandbox, first, second []time.Duration
	for b.Loop() {
		share := b.TempDir()
		for _, id := range []string{"c1", "c2"} {
			busyboxRootfs(b, filepath.Join(share, id, "rootfs"))
		}
		vm := bootGuestLogging(b, share, level)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		start := time.Now()
		_, err := vm.agent.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{
			SandboxId: "bench", Hostname: "bench", ResolvConf: "nameserver 10.10.10.10\n",
			Shares: []*agentapi.Share{{Kind: agentapi.Share_VIRTIOFS, Tag: shareTag, MountPoint: shareMount}},
		})
		if err != nil {
			b.Fatalf("CreateSandbox: %v", err)
		}
		sandbox = append(sandbox, time.Since(start))
		for i, id := range []string{"c1", "c2"} {
			start := time.Now()
			if _, err := vm.agent.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: id, OciSpec: benchSpec(b, id)}); err != nil {
				b.Fatalf("CreateContainer %s: %v", id, err)
			}
			if _, err := vm.agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: id}); err != nil {
				b.Fatalf("StartContainer %s: %v", id, err)
			}
			took := time.Since(start)
			if i == 0 {
				first = append(first, took)
			} else {
				second = append(second, took)
			}
		}
		cancel()
		vm.client.Close()
		_ = vm.cmd.Process.Kill()
		<-vm.exited
		if level == "debug" {
			logGuestTimings(b, vm)
		}
	}
	b.ReportMetric(median(sandbox).Seconds(), "s-create-sandbox")
	b.ReportMetric(median(first).Seconds(), "s-first-container")
	b.ReportMetric(median(second).Seconds(), "s-second-container")
}

// logGuestTimings logs the agent's debug lines from the VM's console (its
// calls, container steps and libcontainer's stages, stamped to the
// microsecond): where the time went, as the guest saw it.
func logGuestTimings(b *testing.B, vm *guestVM) {
	console, err := os.ReadFile(filepath.Join(vm.dir, "console.log"))
	if err != nil {
		b.Logf("console: %v", err)
		return
	}
	for _, line := range strings.Split(string(console), "\n") {
		if strings.Contains(line, "level=debug") && !strings.Contains(line, "method=Check") {
			b.Log(strings.TrimSpace(line))
		}
	}
}

// benchSpec is containerSpec with the default seccomp profile cocoond gives a
// CRI container (compiled by runc's init in the guest on every start).
func benchSpec(b *testing.B, id string) []byte {
	var spec specs.Spec
	if err := json.Unmarshal(containerSpec(id, "sleep", "1000"), &spec); err != nil {
		b.Fatal(err)
	}
	sc, err := ocispec.DefaultSeccomp(spec.Process.Capabilities.Bounding)
	if err != nil {
		b.Fatal(err)
	}
	spec.Linux.Seccomp = sc
	data, err := json.Marshal(&spec)
	if err != nil {
		b.Fatal(err)
	}
	return data
}
