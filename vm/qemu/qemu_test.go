package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/guest"
)

func testGuest(t testing.TB) *guest.Manifest {
	t.Helper()
	if os.Getenv("COCOON_INTEGRATION") == "" || os.Geteuid() != 0 {
		t.Skip("skipping: needs root and COCOON_INTEGRATION (make test-integration)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipping: qemu-system-x86_64 not installed (make deps)")
	}
	m, err := guest.Locate(os.Getenv("COCOON_GUEST_DIR"))
	if err != nil {
		t.Skipf("skipping: no guest (make test-integration builds one): %v", err)
	}
	return m
}

// tapInTestNetns creates a tap inside a network namespace of its own and
// returns the open tap; the namespace goes away with the last reference.
func tapInTestNetns(t testing.TB, name string) *os.File {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	defer func() {
		// A thread left in the test netns would run the next tests there.
		if err := netns.Set(orig); err != nil {
			t.Fatalf("restoring the netns: %v", err)
		}
	}()
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
		f.Close()
		t.Fatalf("TUNSETIFF: %v", errno)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func testSpec(t testing.TB, m *guest.Manifest, id string) *vm.Spec {
	return &vm.Spec{
		ID: id, RunDir: filepath.Join(t.TempDir(), "run"),
		Kernel: m.KernelPath(), Initramfs: m.InitramfsPath(), KernelArgs: []string{"cocoon.log=debug"},
		VCPUs: 1, MaxVCPUs: 2, MemoryMiB: 256, MaxMemoryMiB: 512,
		Shares: []vm.Share{{Tag: "share", Source: t.TempDir()}},
		Accel:  "tcg",
	}
}

func quietDriver() *Driver {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return New(Options{Log: logrus.NewEntry(log)})
}

func agentClient(t testing.TB, v vm.VMM) (*ttrpc.Client, agentapi.AgentClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := agentclient.Wait(ctx, v.DialAgent)
	if err != nil {
		t.Fatal(err)
	}
	return c, agentapi.NewAgentClient(c)
}

// eventually polls cond for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// nicState asks the agent to bring up the NIC with this MAC, as cocoond
// configures a pod's NIC: nil when the guest has it, a NotFound GuestError
// when it has not.
func nicState(a agentapi.AgentClient, mac string) error {
	_, err := a.UpdateInterface(context.Background(), &agentapi.Interface{HwAddr: mac})
	return err
}

func hasMAC(a agentapi.AgentClient, mac string) bool { return nicState(a, mac) == nil }

func TestQEMULifecycleResizeAdopt(t *testing.T) {
	m := testGuest(t)
	ctx := context.Background()
	spec := testSpec(t, m, "life")
	mac1, _ := net.ParseMAC("02:c0:c0:00:00:01")
	spec.NICs = []vm.NIC{{ID: "net0", Tap: tapInTestNetns(t, "tap0"), MAC: mac1, MTU: 1400}}

	d := quietDriver()
	v, err := d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(ctx)
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	client, a := agentClient(t, v)
	if !hasMAC(a, mac1.String()) {
		t.Fatal("boot NIC not in the guest")
	}

	// CPU and memory growth, seen by the guest.
	before, err := a.OnlineCPUMem(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Resize(ctx, 2, 512); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "hotplugged memory online in the guest", func() bool {
		after, err := a.OnlineCPUMem(ctx, &emptypb.Empty{})
		return err == nil && after.MemoryBytes >= before.MemoryBytes+200<<20
	})
	if st := v.State(); st.VCPUs != 2 || st.MemoryMiB != 512 {
		t.Fatalf("state after resize: %+v", st)
	}
	details, err := a.OnlineCPUMem(ctx, &emptypb.Empty{})
	if err != nil || details.OnlineCpus != 2 {
		t.Fatalf("guest online vCPUs after resize: %v, %v", details, err)
	}
	if err := v.Resize(ctx, 1, 512); err == nil {
		t.Fatal("shrinking vCPUs succeeded")
	}

	// cocoond restarts: its connections die, a new driver adopts the VM.
	client.Close()
	state := v.State()
	v.(*qemuVM).qmp.Close()
	v.(*qemuVM).Detach()
	adopted, err := quietDriver().Adopt(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	c2, a2 := agentClient(t, adopted)
	defer c2.Close()
	if !hasMAC(a2, mac1.String()) {
		t.Fatal("adopted VM's agent does not answer")
	}
	if st := adopted.State(); !reflect.DeepEqual(st, state) {
		t.Errorf("adopted state %+v, was %+v", st, state)
	}
	pids := pidsOf(adopted)
	if err := adopted.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, spec.RunDir, pids)
	if _, err := quietDriver().Adopt(ctx, state); !errors.Is(err, vm.ErrNotRunning) {
		t.Fatalf("adopting a stopped VM: %v", err)
	}
}

// pidsOf are the VM's processes: its VMM first, then its helpers.
func pidsOf(v vm.VMM) []int {
	st := v.State()
	pids := []int{st.Pid}
	for _, h := range st.Helpers {
		pids = append(pids, h.Pid)
	}
	return pids
}

func assertGone(t *testing.T, runDir string, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if err := unix.Kill(pid, 0); err == nil {
			if data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); !strings.Contains(string(data), ") Z") {
				t.Errorf("process %d still running", pid)
			}
		}
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s left behind", runDir)
	}
}

// TestProcessDeathIsDetected kills the VM's processes one at a time: QEMU's
// death is the VM's; virtiofsd's stops the VM (a guest without its root
// filesystems is broken), after the grace a powering-off guest gets.
func TestProcessDeathIsDetected(t *testing.T) {
	m := testGuest(t)
	for _, tc := range []struct {
		name    string
		kill    int    // index into pidsOf
		errWith string // what Err must name besides ErrNotRunning
	}{
		{"qemu", 0, ""},
		{"virtiofsd", 1, "virtiofsd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			spec := testSpec(t, m, "death-"+tc.name)
			v, err := quietDriver().Create(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Start(ctx); err != nil {
				t.Fatal(err)
			}
			pids := pidsOf(v)
			if len(pids) <= tc.kill {
				t.Fatalf("pids %v", pids)
			}
			_ = unix.Kill(pids[tc.kill], unix.SIGKILL)
			select {
			case <-v.Done():
			case <-time.After(vm.HelperGrace + 5*time.Second):
				t.Fatalf("%s's death was not noticed", tc.name)
			}
			if err := v.Err(); !errors.Is(err, vm.ErrNotRunning) || !strings.Contains(err.Error(), tc.errWith) {
				t.Fatalf("Err = %v, want ErrNotRunning naming %q", err, tc.errWith)
			}
			if err := v.Start(ctx); !errors.Is(err, vm.ErrNotRunning) {
				t.Fatalf("Start on a dead VM: %v", err)
			}
			if err := v.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			assertGone(t, spec.RunDir, pids)
		})
	}
}

func TestQEMUFailedCreateLeavesNothing(t *testing.T) {
	m := testGuest(t)
	for _, tt := range []struct {
		name   string
		break_ func(*vm.Spec)
	}{
		{"kernel missing", func(s *vm.Spec) { s.Kernel = "/nonexistent/vmlinuz" }},
		{"share source missing", func(s *vm.Spec) { s.Shares[0].Source = "/nonexistent/share" }},
		{"already cancelled", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec := testSpec(t, m, "fail")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.break_ != nil {
				tt.break_(spec)
			} else {
				cancel()
			}
			before := childProcesses()
			v, err := quietDriver().Create(ctx, spec)
			if err == nil {
				_ = v.Stop(context.Background()) // cleanup: the test already fails
				t.Fatal("create succeeded")
			}
			time.Sleep(100 * time.Millisecond)
			if after := childProcesses(); len(after) > len(before) {
				t.Fatalf("processes left: %v → %v (%v)", before, after, err)
			}
			if _, serr := os.Stat(spec.RunDir); !os.IsNotExist(serr) {
				t.Fatalf("run dir left (%v)", err)
			}
		})
	}
}

// childProcesses lists live (non-zombie) qemu and virtiofsd processes.
func childProcesses() []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		if (strings.Contains(s, "(qemu-system-x86") || strings.Contains(s, "(virtiofsd)")) && !strings.Contains(s, ") Z") {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out
}

// TestQEMUBootStopCyclesLeakNothing boots and stops VMs in a row (COCOON_CYCLES,
// default 3) and checks processes, fds, sockets and mounts return to where they were.
func TestQEMUBootStopCyclesLeakNothing(t *testing.T) {
	m := testGuest(t)
	cycles := 3
	if n, err := strconv.Atoi(os.Getenv("COCOON_CYCLES")); err == nil {
		cycles = n
	}
	fds := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
	mounts := func() int { d, _ := os.ReadFile("/proc/self/mountinfo"); return strings.Count(string(d), "\n") }
	procs, fd0, mnt0 := childProcesses(), fds(), mounts()
	var boots []time.Duration
	for i := range cycles {
		spec := testSpec(t, m, "cycle"+strconv.Itoa(i))
		start := time.Now()
		v, err := quietDriver().Create(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		c, _ := agentClient(t, v)
		boots = append(boots, time.Since(start))
		c.Close()
		if err := v.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(spec.RunDir); !os.IsNotExist(err) {
			t.Fatalf("cycle %d: run dir left", i)
		}
	}
	time.Sleep(200 * time.Millisecond)
	leakedProcs := len(childProcesses()) - len(procs)
	t.Logf("%d boot/stop cycles: leaked processes %d, fds %d, mounts %d; boot to agent %v", cycles, leakedProcs, fds()-fd0, mounts()-mnt0, boots)
	if leakedProcs != 0 || fds() != fd0 || mounts() != mnt0 {
		t.Fatalf("leaks after %d cycles: processes %d, fds %d, mounts %d", cycles, leakedProcs, fds()-fd0, mounts()-mnt0)
	}
}

func TestQEMUOrphansAreRemoved(t *testing.T) {
	m := testGuest(t)
	ctx := context.Background()
	root := t.TempDir()
	var specs []*vm.Spec
	var pids []int // nothing of the orphan may survive
	for _, id := range []string{"kept", "orphan"} {
		spec := testSpec(t, m, id)
		spec.RunDir = filepath.Join(root, id)
		v, err := quietDriver().Create(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := vm.SaveState(v.State()); err != nil {
			t.Fatal(err)
		}
		specs = append(specs, spec)
		pids = append(pids, pidsOf(v)...)
		defer v.Stop(ctx)
		v.(*qemuVM).qmp.Close() // as a cocoond restart would
		v.(*qemuVM).Detach()
	}
	d := quietDriver()
	removed, err := vm.RemoveOrphans(ctx, root, map[string]vm.Driver{"qemu": d}, func(st *vm.State) bool { return st.ID == "kept" }, d.opts.Log)
	if err != nil || len(removed) != 1 || removed[0] != "orphan" {
		t.Fatalf("removed %v, %v", removed, err)
	}
	if _, err := os.Stat(specs[1].RunDir); !os.IsNotExist(err) {
		t.Fatal("orphan's run dir left")
	}
	if _, err := os.Stat(specs[0].RunDir); err != nil {
		t.Fatal("kept VM's run dir removed")
	}
	assertGone(t, specs[1].RunDir, pids[len(pids)/2:])
}

func TestQEMUAccelAuto(t *testing.T) {
	m := testGuest(t)
	spec := testSpec(t, m, "auto")
	spec.Accel = "auto"
	d := quietDriver()
	d.opts.KVMProbeTimeout = 20 * time.Second
	v, err := d.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(context.Background())
	accel := v.State().Accel
	if _, err := os.Stat("/dev/kvm"); err != nil && accel != "tcg" {
		t.Fatalf("no /dev/kvm but accel %q", accel)
	}
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := agentClient(t, v)
	c.Close()
	t.Logf("accel=auto chose %s", accel)
}

// BenchmarkQEMUColdBoot measures VMM start to a healthy agent (median, p90)
// and the host memory of an idle VM (QEMU and virtiofsd RSS), against the same
// kernel reaching userspace with no agent in the same run.
//
//	make bench  (or: go test -run XXX -bench QEMUColdBoot -benchtime 10x ./vm/qemu/)
func BenchmarkQEMUColdBoot(b *testing.B) {
	m := testGuest(b)
	var boots, bare []time.Duration
	var qemuRSS, vfsRSS []uint64
	for b.Loop() {
		spec := testSpec(b, m, "bench")
		start := time.Now()
		v, err := quietDriver().Create(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		if err := v.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		c, _ := agentClient(b, v)
		boots = append(boots, time.Since(start))
		time.Sleep(time.Second) // idle
		pids := pidsOf(v)
		qemuRSS = append(qemuRSS, rssKiB(pids[0]))
		vfsRSS = append(vfsRSS, rssKiB(pids[1]))
		c.Close()
		_ = v.Stop(context.Background())

		start = time.Now()
		cmd := exec.Command("qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256",
			"-nodefaults", "-nographic", "-no-reboot", "-kernel", m.KernelPath(), "-initrd", m.InitramfsPath(),
			"-append", "console=ttyS0 panic=-1 rdinit=/none init=/none", "-serial", "null")
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		bare = append(bare, time.Since(start))
	}
	pct := func(d []time.Duration, p int) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[(len(s)-1)*p/100]
	}
	b.ReportMetric(pct(boots, 50).Seconds(), "s-boot-median")
	b.ReportMetric(pct(boots, 90).Seconds(), "s-boot-p90")
	b.ReportMetric(pct(boots, 50).Seconds()/pct(bare, 50).Seconds(), "ratio-boot/bare-kernel")
	slices.Sort(qemuRSS)
	slices.Sort(vfsRSS)
	b.ReportMetric(float64(qemuRSS[len(qemuRSS)/2])/1024, "MiB-qemu-rss")
	b.ReportMetric(float64(vfsRSS[len(vfsRSS)/2])/1024, "MiB-virtiofsd-rss")
}

func rssKiB(pid int) uint64 {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}
