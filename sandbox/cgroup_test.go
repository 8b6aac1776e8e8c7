package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/podcgroup"
	"github.com/cocoon-runtime/cocoon/vm"
)

// Pids no process can have (above the kernel's pid_max), so a stop that
// kills the VM's recorded processes touches nothing real.
const (
	fakeVMMPid       = 1 << 30
	fakeVirtiofsdPid = 1<<30 + 1
)

// fakeCgroups records what the sandbox asks of the pod cgroup manager, in
// order in a log shared with the VMs, and fails where told.
type fakeCgroups struct {
	log                           *[]string
	createErr, joinErr, removeErr error
	removeFailures                int // Remove fails this many times, then works
	exist                         map[podcgroup.Ref][]int
	joined                        []int
	removed                       []podcgroup.Ref
}

func newFakeCgroups(log *[]string) *fakeCgroups {
	return &fakeCgroups{log: log, exist: map[podcgroup.Ref][]int{}}
}

func (f *fakeCgroups) For(parent, podID string) (podcgroup.Ref, error) {
	return podcgroup.For(podcgroup.Cgroupfs, parent, podID)
}

func (f *fakeCgroups) Create(ref podcgroup.Ref) error {
	*f.log = append(*f.log, "cgroup-create")
	if f.createErr != nil {
		return f.createErr
	}
	f.exist[ref] = nil
	return nil
}

func (f *fakeCgroups) Join(_ context.Context, ref podcgroup.Ref, pids ...int) error {
	*f.log = append(*f.log, "cgroup-join")
	if f.joinErr != nil {
		return f.joinErr
	}
	f.exist[ref] = append(f.exist[ref], pids...)
	f.joined = append(f.joined, pids...)
	return nil
}

func (f *fakeCgroups) Remove(_ context.Context, ref podcgroup.Ref) error {
	*f.log = append(*f.log, "cgroup-remove")
	if f.removeFailures > 0 {
		f.removeFailures--
		return f.removeErr
	}
	delete(f.exist, ref)
	f.removed = append(f.removed, ref)
	return nil
}

func (f *fakeCgroups) Kill(_ context.Context, ref podcgroup.Ref) error {
	*f.log = append(*f.log, "cgroup-kill")
	f.exist[ref] = nil
	return nil
}

func (f *fakeCgroups) Strays(claimed func(string) bool) ([]podcgroup.Ref, error) {
	var out []podcgroup.Ref
	for ref := range f.exist {
		if !claimed(ref.PodID) {
			out = append(out, ref)
		}
	}
	return out, nil
}

// pidDriver makes fake VMs whose state names a VMM and a virtiofsd, and logs
// each VM's creation (with whether its pod cgroup was recorded first) and stop.
type pidDriver struct {
	*fakeDriver
	log      *[]string
	recorded func(podID string) bool
}

func (d *pidDriver) Create(ctx context.Context, spec *vm.Spec) (vm.VMM, error) {
	*d.log = append(*d.log, fmt.Sprintf("vm-create cgroup-recorded=%v", d.recorded(spec.ID)))
	v, err := d.fakeDriver.Create(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &pidVMM{fakeVMM: v.(*fakeVMM), log: d.log}, nil
}

type pidVMM struct {
	*fakeVMM
	log *[]string
}

func (v *pidVMM) State() *vm.State {
	st := v.fakeVMM.State()
	st.Pid = fakeVMMPid
	st.Helpers = []vm.Process{{Name: "virtiofsd-" + shareTag, Pid: fakeVirtiofsdPid}}
	return st
}

func (v *pidVMM) Stop(ctx context.Context) error {
	*v.log = append(*v.log, "vm-stop")
	return v.fakeVMM.Stop(ctx)
}

func cgroupTestManager(t *testing.T, d *fakeDriver) (*Manager, *fakeCgroups, *[]string) {
	t.Helper()
	var log []string
	m := testManager(t, &fakeNetwork{}, d)
	installFakeGuest(t, m.opts.Runtime.GuestDir)
	cg := newFakeCgroups(&log)
	m.opts.Cgroups = cg
	m.opts.Drivers["fake"] = &pidDriver{fakeDriver: d, log: &log, recorded: func(id string) bool {
		p, ok := m.pods.get(id)
		return ok && p.Cgroup != nil
	}}
	return m, cg, &log
}

func podConfigWithParent(parent string) *runtimeapi.PodSandboxConfig {
	cfg := podConfig()
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{CgroupParent: parent}
	return cfg
}

// TestRunPodFailureRemovesThePodCgroup breaks RunPod at each step around the
// pod cgroup and checks the order of what happened: the cgroup is recorded
// before the VM exists, the VM's processes join it before the VM runs, and
// the undo removes it only after the VM is stopped.
func TestRunPodFailureRemovesThePodCgroup(t *testing.T) {
	const parent = "/kubepods/burstable/podu"
	for _, tt := range []struct {
		name     string
		parent   string
		driver   *fakeDriver
		breakCg  func(*fakeCgroups)
		wantErr  error
		wantLog  []string
		wantJoin []int
	}{
		{name: "parent of the other driver", parent: "kubepods-burstable-podu.slice", driver: &fakeDriver{},
			wantErr: errdefs.ErrInvalidArgument, wantLog: nil},
		{name: "cgroup cannot be made", parent: parent, driver: &fakeDriver{},
			breakCg: func(f *fakeCgroups) { f.createErr = errors.New("EACCES") },
			wantLog: []string{"cgroup-create", "cgroup-kill", "cgroup-remove"}},
		{name: "VMM create fails", parent: parent, driver: &fakeDriver{createErr: errors.New("no qemu")},
			wantLog: []string{"cgroup-create", "vm-create cgroup-recorded=true", "cgroup-kill", "cgroup-remove"}},
		{name: "processes cannot join", parent: parent, driver: &fakeDriver{},
			breakCg: func(f *fakeCgroups) { f.joinErr = errors.New("ESRCH") },
			wantLog: []string{"cgroup-create", "vm-create cgroup-recorded=true", "cgroup-join", "vm-stop", "cgroup-kill", "cgroup-remove"}},
		{name: "VM start fails", parent: parent, driver: &fakeDriver{startErr: errors.New("cont failed")},
			wantLog:  []string{"cgroup-create", "vm-create cgroup-recorded=true", "cgroup-join", "vm-stop", "cgroup-kill", "cgroup-remove"},
			wantJoin: []int{fakeVMMPid, fakeVirtiofsdPid}},
		{name: "agent never answers", parent: parent, driver: &fakeDriver{},
			wantLog:  []string{"cgroup-create", "vm-create cgroup-recorded=true", "cgroup-join", "vm-stop", "cgroup-kill", "cgroup-remove"},
			wantJoin: []int{fakeVMMPid, fakeVirtiofsdPid}},
		{name: "no parent takes the default", parent: "", driver: &fakeDriver{startErr: errors.New("cont failed")},
			wantLog:  []string{"cgroup-create", "vm-create cgroup-recorded=true", "cgroup-join", "vm-stop", "cgroup-kill", "cgroup-remove"},
			wantJoin: []int{fakeVMMPid, fakeVirtiofsdPid}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, cg, log := cgroupTestManager(t, tt.driver)
			if tt.breakCg != nil {
				tt.breakCg(cg)
			}
			_, err := m.RunPod(context.Background(), podConfigWithParent(tt.parent), "")
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("RunPod = %v, want a failure (%v)", err, tt.wantErr)
			}
			if !slices.Equal(*log, tt.wantLog) {
				t.Errorf("sequence %q, want %q", *log, tt.wantLog)
			}
			if !slices.Equal(cg.joined, tt.wantJoin) {
				t.Errorf("joined pids %v, want %v", cg.joined, tt.wantJoin)
			}
			if len(cg.exist) != 0 {
				t.Errorf("cgroups left: %v", cg.exist)
			}
			wantParent := tt.parent
			if wantParent == "" {
				wantParent = podcgroup.DefaultCgroupfsParent
			}
			for _, ref := range cg.removed {
				if ref.Parent != wantParent {
					t.Errorf("removed a cgroup under %q, want under %q", ref.Parent, wantParent)
				}
			}
			if len(m.Pods()) != 0 {
				t.Errorf("pod stored: %+v", m.Pods())
			}
		})
	}
}

// TestStopFinishesAPodCgroupRemovalThatFailed: when the undo cannot remove
// the cgroup the record stays, naming it, and the next stop removes it.
func TestStopFinishesAPodCgroupRemovalThatFailed(t *testing.T) {
	m, cg, _ := cgroupTestManager(t, &fakeDriver{startErr: errors.New("cont failed")})
	cg.removeErr, cg.removeFailures = errors.New("EBUSY"), 1
	if _, err := m.RunPod(context.Background(), podConfigWithParent("/kubepods/podu"), ""); err == nil {
		t.Fatal("RunPod succeeded")
	}
	pods := m.Pods()
	if len(pods) != 1 || pods[0].Cgroup == nil || pods[0].CleanupPending == "" {
		t.Fatalf("pods after a failed undo: %+v; want one naming its cgroup, cleanup pending", pods)
	}
	if err := m.stopPod(context.Background(), pods[0].ID); err != nil {
		t.Fatal(err)
	}
	if len(cg.exist) != 0 {
		t.Errorf("cgroups left after stop: %v", cg.exist)
	}
	if p, _ := m.Pod(pods[0].ID); p.Cgroup != nil || p.CleanupPending != "" {
		t.Errorf("record after stop: cgroup %v, pending %q", p.Cgroup, p.CleanupPending)
	}
}

// TestStopRemovesTheRecordedCgroup: a stop finds the cgroup from the record
// alone (say after a restart), and clears it from the record.
func TestStopRemovesTheRecordedCgroup(t *testing.T) {
	m, cg, log := cgroupTestManager(t, &fakeDriver{})
	ref, _ := podcgroup.For(podcgroup.Cgroupfs, "/kubepods/podu", strings.Repeat("a", 64))
	cg.exist[ref] = []int{fakeVMMPid}
	pod := Pod{ID: ref.PodID, Name: "p", State: StateReady, Cgroup: &ref, RunDir: t.TempDir()}
	if err := m.pods.add(pod); err != nil {
		t.Fatal(err)
	}
	if err := m.stopPod(context.Background(), pod.ID); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(*log, []string{"cgroup-kill", "cgroup-remove"}) || len(cg.exist) != 0 {
		t.Errorf("sequence %q, cgroups left %v", *log, cg.exist)
	}
	if p, _ := m.Pod(pod.ID); p.Cgroup != nil {
		t.Errorf("record still names cgroup %s", p.Cgroup)
	}
}

// TestRecoverRemovesPodCgroupsNoRecordClaims: a restart removes the cgroups
// of pods that have no record, finishes the pods cut short (their cgroup
// named in the record), and keeps the cgroups of pods that have one.
func TestRecoverRemovesPodCgroupsNoRecordClaims(t *testing.T) {
	m, cg, _ := cgroupTestManager(t, &fakeDriver{})
	mk := func(b byte) podcgroup.Ref {
		ref, _ := podcgroup.For(podcgroup.Cgroupfs, "/kubepods/pod"+string(b), strings.Repeat(string(b), 64))
		cg.exist[ref] = nil
		return ref
	}
	kept, stray, cutShort := mk('a'), mk('b'), mk('c')
	for _, p := range []Pod{
		{ID: kept.PodID, Name: "kept", State: StateNotReady, Cgroup: &kept},
		{ID: cutShort.PodID, Name: "cut", State: StateCreating, Cgroup: &cutShort, RunDir: t.TempDir()},
	} {
		if err := m.pods.add(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := cg.exist[kept]; !ok || len(cg.exist) != 1 {
		t.Errorf("cgroups after recover: %v; want only %s", cg.exist, kept)
	}
	for _, ref := range []podcgroup.Ref{stray, cutShort} {
		if !slices.Contains(cg.removed, ref) {
			t.Errorf("%s was not removed", ref)
		}
	}
}
