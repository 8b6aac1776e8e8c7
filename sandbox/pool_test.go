package sandbox

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm"
)

// fakeWarmNetwork is fakeNetwork that can also hold a warm VM's tap.
type fakeWarmNetwork struct {
	*fakeNetwork
	mu       sync.Mutex
	held     []string
	heldAdds []string // pods attached in a held netns
}

func (f *fakeWarmNetwork) Hold(_ context.Context, id string) (string, *os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = append(f.held, id)
	tap, err := os.Open(os.DevNull)
	return "/run/netns/" + id, tap, err
}

func (f *fakeWarmNetwork) AttachHeld(_ context.Context, req PodNetworkRequest, netns string) (*PodNetwork, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heldAdds = append(f.heldAdds, req.PodID)
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	return &PodNetwork{NetnsPath: netns, MAC: mac, MTU: 1500, IPs: []string{"10.0.0.3/24"},
		Interface: &agentapi.Interface{HwAddr: mac.String(), Name: "eth0"}}, nil
}

func (f *fakeWarmNetwork) Detach(ctx context.Context, id, netns string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fakeNetwork.Detach(ctx, id, netns)
}

func (f *fakeWarmNetwork) detached(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.detachedIDs {
		if d == id {
			return true
		}
	}
	return false
}

// fakeWarmMaker makes warm VMs on fakeVMMs whose agent answers health
// checks only (so a claim fails at CreateSandbox), or fails when told.
type fakeWarmMaker struct {
	t       *testing.T
	m       *Manager
	agent   string
	mu      sync.Mutex
	made    []*warmVM
	failing bool
}

func (f *fakeWarmMaker) make(_ context.Context, handler string, h config.Handler) (*warmVM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return nil, errors.New("no VMM binary")
	}
	id := newID()
	w := &warmVM{id: id, handler: handler, runDir: filepath.Join(f.m.opts.RunDir, id), netns: "/run/netns/" + id, mac: warmMAC()}
	w.shareDir = filepath.Join(w.runDir, shareDirName)
	if err := mkdirs(w.shareDir); err != nil {
		return nil, err
	}
	w.vmm = &fakeVMM{spec: &vm.Spec{ID: id, RunDir: f.m.vmRunDir(id)}, done: make(chan struct{})}
	conn, err := net.Dial("unix", f.agent)
	if err != nil {
		return nil, err
	}
	w.client = ttrpc.NewClient(conn)
	f.made = append(f.made, w)
	return w, nil
}

func (f *fakeWarmMaker) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.made)
}

// poolManager is a Manager with a warm pool of size for handler "h".
func poolManager(t *testing.T, size int) (*Manager, *fakeWarmNetwork, *fakeDriver, *fakeWarmMaker) {
	t.Helper()
	netw := &fakeWarmNetwork{fakeNetwork: &fakeNetwork{}}
	d := &fakeDriver{}
	m := testManager(t, netw.fakeNetwork, d)
	m.opts.Network = netw
	m.refillDelay = time.Nanosecond
	h := m.opts.Runtime.Handlers["h"]
	h.Pool.Size = &size
	m.opts.Runtime.Handlers["h"] = h
	installFakeGuest(t, m.opts.Runtime.GuestDir)
	maker := &fakeWarmMaker{t: t, m: m, agent: agenttest.ServeHealth(t, agenttest.Healthy{})}
	m.StartPools(maker.make)
	t.Cleanup(func() { _ = m.StopPools(context.Background()) })
	return m, netw, d, maker
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPoolFillsAndRefillsAfterATake(t *testing.T) {
	m, _, _, maker := poolManager(t, 2)
	waitFor(t, "a full pool", func() bool { return m.WarmVMs()["h"] == 2 })
	w := m.takeWarm("h")
	if w == nil {
		t.Fatal("no warm VM taken from a full pool")
	}
	if w != maker.made[0] {
		t.Error("the pool did not hand out its oldest warm VM first")
	}
	waitFor(t, "the refill", func() bool { return m.WarmVMs()["h"] == 2 && maker.count() == 3 })
	if m.takeWarm("other") != nil {
		t.Error("a handler without a pool handed out a warm VM")
	}
	_ = m.discardWarm(context.Background(), w)
}

func TestPoolReplacesAWarmVMThatDies(t *testing.T) {
	m, netw, _, maker := poolManager(t, 1)
	waitFor(t, "a full pool", func() bool { return m.WarmVMs()["h"] == 1 })
	dead := maker.made[0]
	_ = dead.vmm.Stop(context.Background()) // the VM process exits
	waitFor(t, "a replacement", func() bool { return maker.count() == 2 && m.WarmVMs()["h"] == 1 })
	waitFor(t, "the dead VM's network detached", func() bool { return netw.detached(dead.id) })
	if _, err := os.Stat(dead.runDir); !os.IsNotExist(err) {
		t.Errorf("dead warm VM's run dir left: %v", err)
	}
	if w := m.takeWarm("h"); w == nil || w == dead {
		t.Errorf("took %v, want the replacement", w)
	}
}

// TestClaimFailureBootsCold: a claim that fails discards the warm VM whole
// and boots the pod cold; the caller sees only the cold boot's outcome.
func TestClaimFailureBootsCold(t *testing.T) {
	m, netw, d, maker := poolManager(t, 1)
	waitFor(t, "a full pool", func() bool { return m.WarmVMs()["h"] == 1 })
	warm := maker.made[0]
	// The warm VM's agent has no Agent service: CreateSandbox fails. The
	// cold VM's agent never answers: the cold boot fails too.
	_, err := m.RunPod(context.Background(), podConfig(), "")
	if err == nil {
		t.Fatal("RunPod succeeded")
	}
	if !strings.Contains(err.Error(), "agent") {
		t.Errorf("err = %v, want the cold boot's agent failure", err)
	}
	if !warm.vmm.(*fakeVMM).stopped || !netw.detached(warm.id) {
		t.Errorf("failed claim left the warm VM: stopped %v, network detached %v", warm.vmm.(*fakeVMM).stopped, netw.detached(warm.id))
	}
	if len(netw.heldAdds) != 1 || netw.heldAdds[0] != warm.id {
		t.Errorf("CNI ADD in held netns for %v, want the warm VM's %s", netw.heldAdds, warm.id)
	}
	if len(d.made) != 1 || d.made[0].spec.ID == warm.id {
		t.Fatalf("cold boots %d, want 1 under a new pod ID", len(d.made))
	}
	if _, err := os.Stat(warm.runDir); !os.IsNotExist(err) {
		t.Errorf("warm VM's run dir left: %v", err)
	}
	if len(m.Pods()) != 0 {
		t.Errorf("pods stored: %+v", m.Pods())
	}
}

// TestClaimGivesBackOnATakenName: a kubelet retry for a pod that exists
// does not use up a warm VM.
func TestClaimGivesBackOnATakenName(t *testing.T) {
	m, _, d, maker := poolManager(t, 1)
	waitFor(t, "a full pool", func() bool { return m.WarmVMs()["h"] == 1 })
	if err := m.podNames.reserve(podName(podConfig().Metadata), "earlier"); err != nil {
		t.Fatal(err)
	}
	var taken *nameTakenError
	if _, err := m.RunPod(context.Background(), podConfig(), ""); !errors.As(err, &taken) {
		t.Fatalf("err = %v, want the name taken", err)
	}
	waitFor(t, "the warm VM back in the pool", func() bool { return m.WarmVMs()["h"] == 1 })
	if w := maker.made[0]; w.vmm.(*fakeVMM).stopped {
		t.Error("the warm VM was discarded")
	}
	if len(d.made) != 0 {
		t.Errorf("%d cold boots for a taken name", len(d.made))
	}
}

func TestStopPoolsDiscardsWarmVMs(t *testing.T) {
	m, netw, _, maker := poolManager(t, 2)
	waitFor(t, "a full pool", func() bool { return m.WarmVMs()["h"] == 2 })
	if err := m.StopPools(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, w := range maker.made {
		if !w.vmm.(*fakeVMM).stopped || !netw.detached(w.id) {
			t.Errorf("warm VM %s not discarded", w.id)
		}
	}
	if m.takeWarm("h") != nil {
		t.Error("a stopped pool handed out a warm VM")
	}
	made := maker.count()
	time.Sleep(50 * time.Millisecond)
	if maker.count() != made {
		t.Error("a stopped pool kept booting")
	}
}

func TestAutoPoolGivesUpWhereVMsNeverBoot(t *testing.T) {
	netw := &fakeWarmNetwork{fakeNetwork: &fakeNetwork{}}
	m := testManager(t, netw.fakeNetwork, &fakeDriver{})
	m.opts.Network = netw
	maker := &fakeWarmMaker{t: t, m: m, failing: true}
	calls := 0
	var mu sync.Mutex
	m.StartPools(func(ctx context.Context, handler string, h config.Handler) (*warmVM, error) {
		mu.Lock()
		calls++
		mu.Unlock()
		return maker.make(ctx, handler, h)
	})
	m.mu.Lock()
	p := m.pools["h"]
	m.mu.Unlock()
	if p == nil {
		t.Skip("skipping: this host has no room for an auto pool")
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("an auto pool whose VMs never boot kept trying")
	}
	if calls != autoPoolGiveUp {
		t.Errorf("%d boots tried, want %d", calls, autoPoolGiveUp)
	}
}

func TestClaimedNetworkSwapsTheMAC(t *testing.T) {
	mac, _ := net.ParseMAC("0a:58:0a:00:00:05")
	n := &PodNetwork{MAC: mac, Interface: &agentapi.Interface{HwAddr: mac.String(), Name: "eth0"}}
	if got := claimedNetwork(n, nil); got != n {
		t.Error("a cold boot's network was changed")
	}
	w := &warmVM{mac: warmMAC()}
	got := claimedNetwork(n, w)
	if got.Interface.HwAddr != w.mac.String() || got.Interface.SetHwAddr != mac.String() {
		t.Errorf("interface %v, want found by %s and set to %s", got.Interface, w.mac, mac)
	}
	if n.Interface.SetHwAddr != "" {
		t.Error("claimedNetwork changed its input")
	}
	if w.mac[0]&1 != 0 || w.mac[0]&2 == 0 {
		t.Errorf("warm MAC %s is not locally administered unicast", w.mac)
	}
}

func TestMemAvailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(path, []byte("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   16777216 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := memAvailable(path); got != 16384 {
		t.Errorf("memAvailable = %d MiB, want 16384", got)
	}
	if got := memAvailable(filepath.Join(t.TempDir(), "none")); got != 0 {
		t.Errorf("missing file: %d, want 0", got)
	}
}

// unusableDriver is a driver whose VMs cannot run on this host (a VMM
// binary missing, no KVM).
type unusableDriver struct{ fakeDriver }

func (unusableDriver) Usable() error { return errors.New("cloud-hypervisor: not on PATH") }

// TestPoolSkipsAHandlerWhoseVMsCannotRun: an auto pool boots nothing for a
// handler whose driver says its VMs cannot run here, while a pool an
// operator sized still tries (and says why it fails).
func TestPoolSkipsAHandlerWhoseVMsCannotRun(t *testing.T) {
	for _, tc := range []struct {
		name     string
		size     *int
		wantPool bool
	}{
		{"auto", nil, false},
		{"sized by the operator", func() *int { n := 1; return &n }(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			netw := &fakeWarmNetwork{fakeNetwork: &fakeNetwork{}}
			m := testManager(t, netw.fakeNetwork, &fakeDriver{})
			m.opts.Network = netw
			h := m.opts.Runtime.Handlers["h"]
			h.Pool.Size = tc.size
			m.opts.Runtime.Handlers["h"] = h
			m.opts.Drivers[h.VMM] = &unusableDriver{}
			maker := &fakeWarmMaker{t: t, m: m, failing: true}
			m.StartPools(maker.make)
			t.Cleanup(func() { _ = m.StopPools(context.Background()) })
			m.mu.Lock()
			p := m.pools["h"]
			m.mu.Unlock()
			if tc.size == nil && p == nil {
				return // as wanted (or the host has no room: either way nothing boots)
			}
			if (p != nil) != tc.wantPool {
				t.Fatalf("pool started: %v, want %v", p != nil, tc.wantPool)
			}
		})
	}
}
