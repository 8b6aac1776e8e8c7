package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
	"github.com/cocoon-runtime/cocoon/cni"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/guest"
)

// fakeNetwork records attach/detach and can fail.
type fakeNetwork struct {
	attachErr   error
	attached    int
	detached    int
	stray       map[string]string // what Attached reports
	detachedIDs []string
	stats       *cni.InterfaceStats // what Stats reports for any netns
}

func (f *fakeNetwork) Attached() (map[string]string, error) { return f.stray, nil }

func (f *fakeNetwork) Stats(netnsPath string) (*cni.InterfaceStats, error) {
	if f.stats == nil {
		return nil, fmt.Errorf("no counters for %s", netnsPath)
	}
	st := *f.stats
	return &st, nil
}

func (f *fakeNetwork) Attach(_ context.Context, req PodNetworkRequest) (*PodNetwork, error) {
	if f.attachErr != nil {
		return nil, f.attachErr
	}
	f.attached++
	tap, _ := os.Open(os.DevNull)
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	return &PodNetwork{NetnsPath: "/run/netns/" + req.PodID, Tap: tap, MAC: mac, MTU: 1500, IPs: []string{"10.0.0.2/24"}}, nil
}

func (f *fakeNetwork) Detach(_ context.Context, id, _ string) error {
	f.detached++
	f.detachedIDs = append(f.detachedIDs, id)
	return nil
}

// fakeDriver makes fakeVMMs that fail where told.
type fakeDriver struct {
	createErr, startErr error
	console             string
	agentSock           string // where a fake agent listens; "" means none answers
	made                []*fakeVMM
}

func (d *fakeDriver) Name() string { return "fake" }

func (d *fakeDriver) Create(_ context.Context, spec *vm.Spec) (vm.VMM, error) {
	if d.createErr != nil {
		return nil, d.createErr
	}
	v := &fakeVMM{spec: spec, startErr: d.startErr, agentSock: d.agentSock, console: d.console, done: make(chan struct{})}
	d.made = append(d.made, v)
	return v, nil
}

func (d *fakeDriver) Adopt(context.Context, *vm.State) (vm.VMM, error) { return nil, vm.ErrNotRunning }

type fakeVMM struct {
	console   string // written to the console log at Start
	spec      *vm.Spec
	startErr  error
	agentSock string
	stopped   bool
	done      chan struct{}
}

func (v *fakeVMM) Start(context.Context) error {
	if v.console != "" {
		_ = os.MkdirAll(v.spec.RunDir, 0o755)
		_ = os.WriteFile(vm.ConsoleLog(v.spec.RunDir), []byte(v.console), 0o644)
	}
	return v.startErr
}
func (v *fakeVMM) Stop(context.Context) error {
	if !v.stopped {
		v.stopped = true
		close(v.done)
	}
	return nil
}
func (v *fakeVMM) Done() <-chan struct{}                        { return v.done }
func (v *fakeVMM) Err() error                                   { return nil }
func (v *fakeVMM) Resize(context.Context, uint32, uint64) error { return nil }
func (v *fakeVMM) State() *vm.State                             { return &vm.State{ID: v.spec.ID, RunDir: v.spec.RunDir} }
func (v *fakeVMM) DialAgent(ctx context.Context) (net.Conn, error) {
	if v.agentSock != "" {
		var d net.Dialer
		return d.DialContext(ctx, "unix", v.agentSock)
	}
	<-ctx.Done() // no agent answers
	return nil, ctx.Err()
}

// fakeBoots records boot observations.
type fakeBoots struct {
	ok, failed []string // handler/vmm of each boot
}

func (f *fakeBoots) ObserveBoot(handler, vmm string, d time.Duration, err error) {
	if err != nil {
		f.failed = append(f.failed, handler+"/"+vmm)
		return
	}
	f.ok = append(f.ok, handler+"/"+vmm)
}

// fakeAgentCalls records the methods of failed agent calls.
type fakeAgentCalls struct {
	mu     sync.Mutex
	failed []string
}

func (f *fakeAgentCalls) ObserveAgentCall(_ context.Context, method string, err error) {
	if err != nil {
		f.mu.Lock()
		f.failed = append(f.failed, method)
		f.mu.Unlock()
	}
}

func testManager(t *testing.T, netw *fakeNetwork, d *fakeDriver) *Manager {
	t.Helper()
	dir := t.TempDir()
	guestDir := filepath.Join(dir, "guest")
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	m, err := New(Options{
		StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), VMDir: filepath.Join(dir, "vm"),
		Runtime: config.Runtime{DefaultHandler: "h", GuestDir: guestDir, Handlers: map[string]config.Handler{
			"h": {VMM: "fake", VCPUs: 1, MemoryMiB: 256, BootTimeout: config.Duration(300 * time.Millisecond), GuestDir: guestDir},
		}},
		Drivers:    map[string]vm.Driver{"fake": d},
		Network:    netw,
		Log:        logrus.NewEntry(log),
		Boot:       &fakeBoots{},
		AgentCalls: &fakeAgentCalls{},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func podConfig() *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u"}}
}

func TestRunPodValidation(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	ctx := context.Background()
	hostNet := podConfig()
	hostNet.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
	for _, tt := range []struct {
		name    string
		cfg     *runtimeapi.PodSandboxConfig
		handler string
		want    error
	}{
		{"no metadata", &runtimeapi.PodSandboxConfig{}, "", errdefs.ErrInvalidArgument},
		{"host network", hostNet, "", errdefs.ErrInvalidArgument},
		{"unknown handler", podConfig(), "nope", errdefs.ErrInvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := m.RunPod(ctx, tt.cfg, tt.handler); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestRunPodFailureLeavesNothing breaks each step after the network and checks
// that the steps before it were undone.
func TestRunPodFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		netErr    error
		driver    *fakeDriver
		noGuest   bool
		wantVMs   int
		wantStops int
		// The boot counts as failed once the VMM was being started, and as
		// good once the agent is healthy, whatever follows.
		wantBootFailed, wantBootOK bool
		agent                      bool
	}{
		{name: "network fails", netErr: errors.New("CNI ADD failed"), driver: &fakeDriver{}},
		{name: "no guest installed", driver: &fakeDriver{}, noGuest: true},
		{name: "VMM create fails", driver: &fakeDriver{createErr: errors.New("no qemu")}, wantBootFailed: true},
		{name: "VM start fails", driver: &fakeDriver{startErr: errors.New("cont failed")}, wantVMs: 1, wantStops: 1, wantBootFailed: true},
		{name: "agent never answers", driver: &fakeDriver{}, wantVMs: 1, wantStops: 1, wantBootFailed: true},
		{name: "guest setup fails", driver: &fakeDriver{}, agent: true, wantVMs: 1, wantStops: 1, wantBootOK: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			netw := &fakeNetwork{attachErr: tt.netErr}
			if tt.agent {
				// Healthy, but with no Agent service: guest setup fails after a good boot.
				tt.driver.agentSock = agenttest.ServeHealth(t, agenttest.Healthy{})
			}
			m := testManager(t, netw, tt.driver)
			if !tt.noGuest {
				installFakeGuest(t, m.opts.Runtime.GuestDir)
			}
			if _, err := m.RunPod(context.Background(), podConfig(), ""); err == nil {
				t.Fatal("RunPod succeeded")
			}
			if netw.attached != netw.detached {
				t.Errorf("network attached %d, detached %d", netw.attached, netw.detached)
			}
			if len(tt.driver.made) != tt.wantVMs {
				t.Errorf("%d VMs made, want %d", len(tt.driver.made), tt.wantVMs)
			}
			for _, v := range tt.driver.made {
				if !v.stopped {
					t.Error("VM not stopped")
				}
			}
			if len(m.Pods()) != 0 {
				t.Errorf("pod stored: %+v", m.Pods())
			}
			boots := m.opts.Boot.(*fakeBoots)
			var wantOK, wantFailed []string
			if tt.wantBootFailed {
				wantFailed = []string{"h/fake"}
			}
			if tt.wantBootOK {
				wantOK = []string{"h/fake"}
			}
			if fmt.Sprint(boots.ok) != fmt.Sprint(wantOK) || fmt.Sprint(boots.failed) != fmt.Sprint(wantFailed) {
				t.Errorf("boots ok %v failed %v, want ok %v failed %v", boots.ok, boots.failed, wantOK, wantFailed)
			}
			// The pod's agent client reports its calls: the agent here has no
			// Agent service, so CreateSandbox fails.
			if calls := m.opts.AgentCalls.(*fakeAgentCalls); tt.agent && fmt.Sprint(calls.failed) != "[CreateSandbox]" {
				t.Errorf("failed agent calls %v, want [CreateSandbox]", calls.failed)
			}
			if entries, _ := os.ReadDir(m.opts.RunDir); len(entries) != 0 {
				t.Errorf("run dir left: %v", entries)
			}
			// The name is free again: a retry is not refused as a duplicate.
			if err := m.podNames.reserve(podName(podConfig().Metadata), "other"); err != nil {
				t.Errorf("name still reserved: %v", err)
			}
		})
	}
}

// installFakeGuest writes files vm/guest.Locate accepts.
func installFakeGuest(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinuz", "initramfs.cpio.zst"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeGuestManifest(t, dir)
}

func writeGuestManifest(t *testing.T, dir string) {
	t.Helper()
	file := func(name string) guest.File {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return guest.File{Name: name, Size: int64(len(data)), SHA256: fmt.Sprintf("%x", sha256.Sum256(data))}
	}
	m := guest.Manifest{Schema: guest.ManifestSchema, KernelVersion: "test", Kernel: file("vmlinuz"), Initramfs: file("initramfs.cpio.zst")}
	data, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, guest.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRunPodSizesVMFromPodResources: kubelet sends the pod's summed limits
// in the sandbox config; the VM boots big enough for them.
func TestRunPodSizesVMFromPodResources(t *testing.T) {
	t.Parallel()
	d := &fakeDriver{}
	m := testManager(t, &fakeNetwork{}, d)
	h := m.opts.Runtime.Handlers["h"]
	h.MaxVCPUs, h.MaxMemoryMiB = 4, 2048
	m.opts.Runtime.Handlers["h"] = h
	installFakeGuest(t, m.opts.Runtime.GuestDir)
	cfg := podConfig()
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{Resources: &runtimeapi.LinuxContainerResources{
		CpuQuota: 250000, CpuPeriod: 100000, MemoryLimitInBytes: 512 << 20,
	}}
	_, _ = m.RunPod(context.Background(), cfg, "") // the fake agent never answers
	if len(d.made) != 1 {
		t.Fatalf("%d VMs made", len(d.made))
	}
	if s := d.made[0].spec; s.VCPUs != 3 || s.MemoryMiB != 512+guestOverheadMiB {
		t.Errorf("VM booted with %d vCPUs, %d MiB; want 3, %d", s.VCPUs, s.MemoryMiB, 512+guestOverheadMiB)
	}
}

// TestRunPodBootFailureCarriesConsole: the VM's run dir goes with the undo,
// so the error must carry what the guest said.
func TestRunPodBootFailureCarriesConsole(t *testing.T) {
	t.Parallel()
	d := &fakeDriver{console: "Kernel panic - not syncing: VFS: Unable to mount root fs"}
	m := testManager(t, &fakeNetwork{}, d)
	installFakeGuest(t, m.opts.Runtime.GuestDir)
	_, err := m.RunPod(context.Background(), podConfig(), "")
	if err == nil || !strings.Contains(err.Error(), "Kernel panic") {
		t.Fatalf("err = %v, want the guest console's end in it", err)
	}
}

// TestRecoverDetachesStrayNetworks: a network no pod record claims (a crash
// before the pod was persisted) is detached at startup; a pod's own is not.
func TestRecoverDetachesStrayNetworks(t *testing.T) {
	t.Parallel()
	netw := &fakeNetwork{}
	m := testManager(t, netw, &fakeDriver{})
	kept, gone := pad("aa"), pad("bb")
	addPod(t, m, kept, "p", "ns", StateNotReady)
	netw.stray = map[string]string{kept: "/run/netns/" + kept, gone: "/run/netns/" + gone}
	if err := m.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(netw.detachedIDs) != "["+gone+"]" {
		t.Errorf("detached %v, want only the stray one", netw.detachedIDs)
	}
}
