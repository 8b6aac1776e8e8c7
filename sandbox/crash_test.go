package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
	"github.com/cocoon-runtime/cocoon/vm"
)

// recordCheckingNetwork checks, at Attach, that the pod's record already
// exists; it can also fail its Detach.
type recordCheckingNetwork struct {
	fakeNetwork
	m             *Manager
	stateAtAttach PodState
	detachErr     error
}

func (n *recordCheckingNetwork) Attach(ctx context.Context, req PodNetworkRequest) (*PodNetwork, error) {
	if p, ok := n.m.pods.get(req.PodID); ok {
		n.stateAtAttach = p.State
	}
	return n.fakeNetwork.Attach(ctx, req)
}

func (n *recordCheckingNetwork) Detach(ctx context.Context, id, netns string) error {
	if n.detachErr != nil {
		return n.detachErr
	}
	return n.fakeNetwork.Detach(ctx, id, netns)
}

// recordCheckingDriver checks, at Create, that the pod's record names its
// network already.
type recordCheckingDriver struct {
	fakeDriver
	m             *Manager
	netnsAtCreate string
}

func (d *recordCheckingDriver) Create(ctx context.Context, spec *vm.Spec) (vm.VMM, error) {
	if p, ok := d.m.pods.get(spec.ID); ok {
		d.netnsAtCreate = p.NetnsPath
	}
	return d.fakeDriver.Create(ctx, spec)
}

// TestRunPodRecordsBeforeMaking: the pod's record exists (CREATING) before
// its network is attached and names the netns before the VM is made, so a
// cocoond killed in between leaves a record leading a restart to them.
func TestRunPodRecordsBeforeMaking(t *testing.T) {
	t.Parallel()
	netw := &recordCheckingNetwork{}
	d := &recordCheckingDriver{}
	m := testManager(t, &netw.fakeNetwork, &d.fakeDriver)
	m.opts.Network, netw.m = netw, m
	m.opts.Drivers["fake"], d.m = d, m
	installFakeGuest(t, m.opts.Runtime.GuestDir)
	_, _ = m.RunPod(context.Background(), podConfig(), "") // the fake agent never answers
	if netw.stateAtAttach != StateCreating {
		t.Errorf("pod record at network attach: %q, want %q", netw.stateAtAttach, StateCreating)
	}
	if d.netnsAtCreate == "" {
		t.Error("pod record did not name its netns when the VM was made")
	}
	if len(m.Pods()) != 0 {
		t.Errorf("a failed run left records: %+v", m.Pods())
	}
}

// TestRunPodFailedUndoKeepsRecord: when undoing a failed run fails too, the
// record stays, NOTREADY and marked, so a Stop/Remove (kubelet's garbage
// collection) or a restart finishes the cleanup.
func TestRunPodFailedUndoKeepsRecord(t *testing.T) {
	t.Parallel()
	netw := &recordCheckingNetwork{detachErr: errors.New("CNI DEL: plugin missing")}
	m := testManager(t, &netw.fakeNetwork, &fakeDriver{})
	m.opts.Network, netw.m = netw, m
	installFakeGuest(t, m.opts.Runtime.GuestDir)
	if _, err := m.RunPod(context.Background(), podConfig(), ""); err == nil {
		t.Fatal("RunPod succeeded")
	}
	pods := m.Pods()
	if len(pods) != 1 || pods[0].State != StateNotReady || pods[0].CleanupPending == "" || pods[0].NetnsPath == "" {
		t.Fatalf("pods %+v, want one NOTREADY with cleanup pending and its netns", pods)
	}
	netw.detachErr = nil
	if err := m.RemovePod(context.Background(), pods[0].ID); err != nil {
		t.Fatal(err)
	}
	if netw.detached != 1 || len(m.Pods()) != 0 {
		t.Fatalf("after a retry: %d detaches, pods %+v", netw.detached, m.Pods())
	}
}

// TestStopPodFailureStaysPending: a stop whose network detach fails keeps
// the pod recorded with the failure; a restart (Recover) retries it.
func TestStopPodFailureStaysPending(t *testing.T) {
	t.Parallel()
	netw := &recordCheckingNetwork{detachErr: errors.New("CNI DEL: plugin missing")}
	m := testManager(t, &netw.fakeNetwork, &fakeDriver{})
	m.opts.Network, netw.m = netw, m
	id := pad("cc")
	addPod(t, m, id, "p", "ns", StateReady)
	if _, err := m.pods.update(id, func(p *Pod) error { p.NetnsPath = "/run/netns/" + id; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := m.StopPod(context.Background(), id); err == nil {
		t.Fatal("StopPod hid the failed detach")
	}
	p, _ := m.Pod(id)
	if p.CleanupPending == "" || p.NetnsPath == "" || p.State != StateNotReady {
		t.Fatalf("after a failed stop: %+v, want NOTREADY, cleanup pending, netns kept", p)
	}
	// A restarted cocoond loads the record and finishes the stop.
	netw.detachErr = nil
	m2, err := New(m.opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	p, _ = m2.Pod(id)
	if p.CleanupPending != "" || p.NetnsPath != "" || netw.detached != 1 {
		t.Fatalf("after the restart: %+v, %d detaches", p, netw.detached)
	}
}

// TestRecoverReclaimsRunsCutShort: a pod still CREATING at startup (cocoond
// was killed during RunPodSandbox) is removed with its network, its pod dir
// and its VM run dir, recorded or not; other pods' are kept.
func TestRecoverReclaimsRunsCutShort(t *testing.T) {
	t.Parallel()
	netw := &fakeNetwork{}
	m := testManager(t, netw, &fakeDriver{})
	cut, kept := pad("dd"), pad("ee")
	addPod(t, m, cut, "cut", "ns", StateCreating)
	addPod(t, m, kept, "kept", "ns", StateNotReady)
	for _, id := range []string{cut, kept} {
		if _, err := m.pods.update(id, func(p *Pod) error { p.RunDir = filepath.Join(m.opts.RunDir, id); return nil }); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{filepath.Join(m.opts.RunDir, id, "shared"), m.vmRunDir(id)} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The cut-short run had its network attached but not yet recorded.
	netw.stray = map[string]string{cut: "/run/netns/" + cut}
	stray := filepath.Join(m.opts.RunDir, pad("ff")) // a pod dir no record claims
	if err := os.MkdirAll(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Pod(cut); err == nil {
		t.Error("the pod cut short is still recorded")
	}
	if _, err := m.Pod(kept); err != nil {
		t.Errorf("the other pod: %v", err)
	}
	if len(netw.detachedIDs) == 0 || netw.detachedIDs[0] != cut {
		t.Errorf("detached %v, want the cut-short pod's network", netw.detachedIDs)
	}
	for _, d := range []string{filepath.Join(m.opts.RunDir, cut), m.vmRunDir(cut), stray} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left", d)
		}
	}
	for _, d := range []string{filepath.Join(m.opts.RunDir, kept), m.vmRunDir(kept)} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("the kept pod's %s: %v", d, err)
		}
	}
}

// TestStorageMarker: only storage containers cocoond marked are swept; a
// container another tool made in the same graph root never is.
func TestStorageMarker(t *testing.T) {
	t.Parallel()
	for meta, want := range map[string]bool{
		storageMetadata(pad("aa")):       true,
		"":                               false,
		`{"creator":"podman"}`:           false,
		`not json`:                       false,
		`{"creator":"cocoond","pod":""}`: true,
	} {
		if got := madeByCocoond(meta); got != want {
			t.Errorf("madeByCocoond(%q) = %v", meta, got)
		}
	}
}

// adoptingDriver re-adopts VMs as fakeVMMs with a healthy agent.
type adoptingDriver struct {
	fakeDriver
	adopted []*fakeVMM
}

func (d *adoptingDriver) Adopt(_ context.Context, st *vm.State) (vm.VMM, error) {
	v := &fakeVMM{spec: &vm.Spec{ID: st.ID, RunDir: st.RunDir}, agentSock: d.agentSock, done: make(chan struct{})}
	d.adopted = append(d.adopted, v)
	return v, nil
}

// TestRecoverStopsWhatItAdoptedOnError: re-adopting a pod fails after its
// VM was adopted and its agent reached (a container's log cannot be
// opened); the VM must not be left running unwatched.
func TestRecoverStopsWhatItAdoptedOnError(t *testing.T) {
	t.Parallel()
	d := &adoptingDriver{}
	d.agentSock = agenttest.ServeHealth(t, agenttest.Healthy{})
	m := testManager(t, &fakeNetwork{}, &d.fakeDriver)
	m.opts.Drivers["fake"] = d
	id := pad("ab")
	addPod(t, m, id, "p", "ns", StateReady)
	if _, err := m.pods.update(id, func(p *Pod) error {
		p.VM = &vm.State{Driver: "fake", ID: id, RunDir: m.vmRunDir(id), Pid: 1}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.containers.add(Container{ID: pad("c1"), PodID: id, Name: "c", State: StateRunning,
		LogPath: filepath.Join(blocker, "c.log")}); err != nil { // a log path below a file cannot be opened
		t.Fatal(err)
	}
	_ = m.Recover(context.Background())
	if len(d.adopted) == 0 {
		t.Fatal("the VM was not adopted")
	}
	if !d.adopted[0].stopped {
		t.Error("the adopted VM was left running after the pod could not be recovered")
	}
	if p, _ := m.Pod(id); p.State != StateNotReady {
		t.Errorf("pod %s after a failed recovery, want NOTREADY", p.State)
	}
	if _, err := m.runtime(id); err == nil {
		t.Error("a pod that could not be recovered is live")
	}
}
