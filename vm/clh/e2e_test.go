package clh

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/guest"
	"github.com/cocoon-runtime/cocoon/vm/qemu"
)

// TestEndToEnd boots the installed guest under the real cloud-hypervisor and
// asks its agent for health over hybrid vsock. It runs only where CH is
// installed and KVM can create VMs.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode: no real VM")
	}
	bin, err := exec.LookPath(DefaultBinary)
	if err != nil {
		t.Skip("cloud-hypervisor not on PATH")
	}
	dir := os.Getenv("COCOON_GUEST_DIR")
	if dir == "" {
		dir = guest.DefaultDir
	}
	g, err := guest.Locate(dir)
	if err != nil {
		t.Skipf("no guest: %v", err)
	}
	if reason := kvmUnusable(g); reason != "" {
		t.Skip(reason)
	}
	root, err := os.MkdirTemp("", "clh-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	spec := &vm.Spec{
		ID: "e2e", RunDir: filepath.Join(root, "vm"), Kernel: g.KernelPath(), Initramfs: g.InitramfsPath(),
		KernelArgs: []string{"cocoon.log=debug"}, VCPUs: 1, MaxVCPUs: 2, MemoryMiB: 512, MaxMemoryMiB: 1024,
	}
	if _, err := os.Stat(vm.VirtiofsdPath); err == nil {
		spec.Shares = []vm.Share{{Tag: "e2e", Source: root}}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	m, err := New(Options{Binary: bin, Log: testLog(t)}).Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	v := m.(*VMM)
	pids := []int{v.State().Pid}
	for _, h := range v.State().Helpers {
		pids = append(pids, h.Pid)
	}
	defer func() {
		if t.Failed() {
			if b, err := os.ReadFile(vm.ConsoleLog(spec.RunDir)); err == nil {
				t.Logf("guest console:\n%s", b)
			}
		}
		if err := v.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
		for _, pid := range pids {
			if unix.Kill(pid, 0) == nil {
				t.Errorf("pid %d survived Stop", pid)
			}
		}
		if _, err := os.Stat(spec.RunDir); err == nil {
			t.Errorf("run dir %s survived Stop", spec.RunDir)
		}
	}()
	if err := v.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	conn, err := v.DialAgent(ctx)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	resp, err := agentapi.NewHealthClient(c).Check(ctx, &agentapi.CheckRequest{})
	if err != nil {
		t.Fatalf("Health.Check: %v", err)
	}
	if resp.Status != agentapi.CheckResponse_SERVING {
		t.Errorf("agent health %v", resp.Status)
	}
}

// kvmUnusable says why KVM cannot boot our guest here ("" when it can). A
// trivial KVM guest is not proof: nested PVM hosts run one and hang a real
// kernel, so this boots the guest itself with KVM (through QEMU).
func kvmUnusable(g *guest.Manifest) string {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "cannot prove KVM boots the guest: qemu-system-x86_64 not installed"
	}
	spec := &vm.Spec{ID: "clh-kvm-probe", RunDir: filepath.Join(os.TempDir(), "clh-kvm-probe"),
		Kernel: g.KernelPath(), Initramfs: g.InitramfsPath(), VCPUs: 1, MemoryMiB: 256}
	d := qemu.New(qemu.Options{Log: logrus.NewEntry(logrus.New())})
	if _, err := d.ProbeKVM(context.Background(), spec); err != nil {
		return "KVM does not boot the guest here: " + err.Error()
	}
	return ""
}
