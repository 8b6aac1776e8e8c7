package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

// The tests here play a root guest: they plant in a pod's share what the
// guest could write there through virtio-fs (symlinks to host files and
// dirs, FIFOs, a symlink in place of a container's dir) and check that no
// host operation reads, creates, truncates or removes anything outside the
// pod's dirs, and that none hangs.

// hostDeadline bounds every host operation on a hostile share: a FIFO the
// host opened would block it forever.
const hostDeadline = 5 * time.Second

// within runs fn and fails the test if it does not return in time.
func within[T any](t *testing.T, what string, fn func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- fn() }()
	select {
	case v := <-done:
		return v
	case <-time.After(hostDeadline):
		t.Fatalf("%s did not return within %s: blocked on something the guest planted", what, hostDeadline)
		panic("unreachable")
	}
}

// victims are host files and dirs outside the pod's dirs that planted
// symlinks point at; they must come out of every test untouched.
type victims struct {
	dir, file, fresh string // an existing dir and file, and a path that must not appear
}

func newVictims(t *testing.T) victims {
	t.Helper()
	d := t.TempDir()
	v := victims{dir: filepath.Join(d, "dir"), file: filepath.Join(d, "secret"), fresh: filepath.Join(d, "fresh")}
	if err := os.Mkdir(v.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.dir, "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.file, []byte(`{"ociVersion":"host secret"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v victims) check(t *testing.T) {
	t.Helper()
	if data, err := os.ReadFile(v.file); err != nil || string(data) != `{"ociVersion":"host secret"}` {
		t.Errorf("host file %s changed: %q %v", v.file, data, err)
	}
	entries, err := os.ReadDir(v.dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != "keep" {
		t.Errorf("host dir %s changed: %v %v", v.dir, entries, err)
	}
	if _, err := os.Lstat(v.fresh); !os.IsNotExist(err) {
		t.Errorf("the host got %s created: %v", v.fresh, err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	_ = os.RemoveAll(link)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func fifo(t *testing.T, path string) {
	t.Helper()
	_ = os.RemoveAll(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBindRefusesWhatTheGuestPlanted: creating a mount point never follows
// a symlink out of the share, never opens a FIFO, and attaches nothing.
func TestBindRefusesWhatTheGuestPlanted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, ctr string, v victims)
		rel   string // the mount point bind creates, below the container's dir
		dir   bool
	}{
		{"container dir is a symlink to a host dir", func(t *testing.T, ctr string, v victims) { symlink(t, v.dir, ctr) }, "mounts/0", true},
		{"mounts is a symlink to a host dir", func(t *testing.T, ctr string, v victims) { symlink(t, v.dir, filepath.Join(ctr, "mounts")) }, "mounts/0", false},
		{"rootfs is a symlink to a host dir", func(t *testing.T, ctr string, v victims) { symlink(t, v.dir, filepath.Join(ctr, "rootfs")) }, "rootfs", true},
		{"file mount point is a symlink to a host file", func(t *testing.T, ctr string, v victims) { symlink(t, v.file, filepath.Join(ctr, "mounts/0")) }, "mounts/0", false},
		{"file mount point is a dangling symlink to a new host file", func(t *testing.T, ctr string, v victims) { symlink(t, v.fresh, filepath.Join(ctr, "mounts/0")) }, "mounts/0", false},
		{"file mount point is a FIFO", func(t *testing.T, ctr string, v victims) { fifo(t, filepath.Join(ctr, "mounts/0")) }, "mounts/0", false},
		{"dir mount point is a symlink to a host dir", func(t *testing.T, ctr string, v victims) { symlink(t, v.dir, filepath.Join(ctr, "mounts/0")) }, "mounts/0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVictims(t)
			share := t.TempDir()
			ctr := filepath.Join(share, "cid")
			tc.plant(t, ctr, v)
			sm := &fakeMounter{}
			c := &Container{ID: "cid"}
			err := within(t, "bind", func() error {
				return bind(sm, c, t.TempDir(), share, filepath.Join(ctr, tc.rel), tc.dir, vm.Writable)
			})
			if !errors.Is(err, vm.ErrUnsafePath) {
				t.Errorf("bind err = %v, want ErrUnsafePath", err)
			}
			if len(sm.attached) != 0 || len(c.Binds) != 0 {
				t.Errorf("attached %v, recorded %v on a planted path", sm.attached, c.Binds)
			}
			v.check(t)
		})
	}
}

// TestUnbindAllStaysInTheShare: removing a container's share dir removes
// planted symlinks, not their targets, and never empties a mount it finds.
func TestUnbindAllStaysInTheShare(t *testing.T) {
	t.Parallel()
	v := newVictims(t)
	share := t.TempDir()
	ctr := filepath.Join(share, "cid")
	symlink(t, v.dir, filepath.Join(ctr, "rootfs"))
	symlink(t, v.file, filepath.Join(ctr, "mounts/0"))
	symlink(t, "/", filepath.Join(ctr, "mounts/1"))
	fifo(t, filepath.Join(ctr, "fifo"))
	c := &Container{ID: "cid", Binds: []string{filepath.Join(ctr, "rootfs"), filepath.Join(ctr, "mounts/0")}}
	sm := &fakeMounter{}
	if err := within(t, "unbindAll", func() error { return unbindAll(sm, c, ctr) }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(ctr); !os.IsNotExist(err) {
		t.Errorf("container share dir left: %v", err)
	}
	v.check(t)

	// The container's dir itself replaced by a symlink to a host dir.
	symlink(t, v.dir, ctr)
	c = &Container{ID: "cid", Binds: []string{filepath.Join(ctr, "rootfs")}}
	if err := within(t, "unbindAll", func() error { return unbindAll(sm, c, ctr) }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(ctr); !os.IsNotExist(err) {
		t.Errorf("planted symlink left: %v", err)
	}
	v.check(t)
}

// TestUnbindAllNeverUnmountsHostMounts: a record's bind path, resolved on
// the host, must not reach a host mount through a planted symlink, and
// removal must not walk into a mount it finds in the share.
func TestUnbindAllNeverUnmountsHostMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	hostMount := t.TempDir()
	if err := unix.Mount("none", hostMount, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(hostMount, unix.MNT_DETACH)
	if err := os.WriteFile(filepath.Join(hostMount, "data"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	share := t.TempDir()
	ctr := filepath.Join(share, "cid")
	symlink(t, hostMount, filepath.Join(ctr, "mounts/0"))
	c := &Container{ID: "cid", Binds: []string{filepath.Join(ctr, "mounts/0")}}
	if err := within(t, "unbindAll", func() error { return unbindAll(nil, c, ctr) }); err != nil {
		t.Fatal(err)
	}
	if mounted, err := isMountPoint(hostMount); err != nil || !mounted {
		t.Errorf("host mount %s was unmounted through a planted symlink (mounted=%v, %v)", hostMount, mounted, err)
	}

	// A volume mounted in the share that no record names: refuse, keep it.
	vol := filepath.Join(ctr, "mounts/1")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(hostMount, vol, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(vol, unix.MNT_DETACH)
	c = &Container{ID: "cid"}
	if err := unbindAll(nil, c, ctr); !errors.Is(err, vm.ErrUnsafePath) {
		t.Errorf("removing a share dir with a mount in it: err = %v, want ErrUnsafePath", err)
	}
	if _, err := os.Stat(filepath.Join(hostMount, "data")); err != nil {
		t.Errorf("removal walked into a volume: %v", err)
	}
}

func isMountPoint(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return false, err
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}

// TestWritePodFilesRefusesPlantedPaths: the pod's hosts, hostname and
// resolv.conf never truncate a host file through a symlink, nor hang on a FIFO.
func TestWritePodFilesRefusesPlantedPaths(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, share string, v victims)
	}{
		{"hosts is a symlink to a host file", func(t *testing.T, share string, v victims) { symlink(t, v.file, filepath.Join(share, "hosts")) }},
		{"hostname is a dangling symlink", func(t *testing.T, share string, v victims) { symlink(t, v.fresh, filepath.Join(share, "hostname")) }},
		{"resolv.conf is a FIFO", func(t *testing.T, share string, v victims) { fifo(t, filepath.Join(share, "resolv.conf")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVictims(t)
			share := t.TempDir()
			tc.plant(t, share, v)
			err := within(t, "writePodFiles", func() error { return writePodFiles(share, podConfig(), &PodNetwork{IPs: []string{"10.0.0.2/24"}}) })
			if !errors.Is(err, vm.ErrUnsafePath) {
				t.Errorf("err = %v, want ErrUnsafePath", err)
			}
			v.check(t)
		})
	}
}

// fakeExecAgent runs every exec with no output and exit code 0, and keeps
// the process it was asked to run.
type fakeExecAgent struct {
	agentapi.AgentClient
	process []byte
}

func (a *fakeExecAgent) ExecProcess(_ context.Context, req *agentapi.ExecProcessRequest) (*emptypb.Empty, error) {
	a.process = req.GetProcess()
	return &emptypb.Empty{}, nil
}
func (a *fakeExecAgent) ReadOutput(context.Context, *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	return eofStream{}, nil
}
func (a *fakeExecAgent) WaitProcess(context.Context, *agentapi.ProcessRequest) (*agentapi.WaitProcessResponse, error) {
	return &agentapi.WaitProcessResponse{}, nil
}
func (a *fakeExecAgent) SignalProcess(context.Context, *agentapi.SignalProcessRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}
func (a *fakeExecAgent) RemoveContainer(context.Context, *agentapi.RemoveContainerRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

type eofStream struct{ ttrpc.ClientStream }

func (eofStream) Recv() (*agentapi.OutputChunk, error) { return nil, io.EOF }

// TestHostileShareLifecycle plants before and between ExecSync,
// RemoveContainer, StopPodSandbox and RemovePodSandbox what a root guest
// could, and checks that the host reads its own record of the spec, touches
// nothing outside the pod's dirs, never hangs, and leaves no pod dir.
func TestHostileShareLifecycle(t *testing.T) {
	v := newVictims(t)
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	m.opts.Images = fakeImages{}
	if os.Geteuid() == 0 {
		m.opts.Runtime.ShareSizeMiB = 1
	}
	podID, ctrID := pad("aa"), pad("cc")
	pod := Pod{ID: podID, Name: "p_ns_u_0", State: StateReady, RunDir: filepath.Join(m.opts.RunDir, podID)}
	pod.ShareDir = filepath.Join(pod.RunDir, "shared")
	if err := mkdirs(pod.RunDir); err != nil {
		t.Fatal(err)
	}
	if err := mountShare(pod.ShareDir, m.opts.Runtime.ShareSizeMiB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(pod.ShareDir, unix.MNT_DETACH) })
	if err := m.pods.add(pod); err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(specs.Spec{Version: "recorded", Process: &specs.Process{Env: []string{"FROM=record"}, Cwd: "/"}})
	ctr := filepath.Join(pod.ShareDir, ctrID)
	raw, _ := marshalConfig(&runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}})
	if err := m.containers.add(Container{
		ID: ctrID, PodID: podID, Name: "c", Config: raw, State: StateRunning, Spec: spec,
		Binds: []string{filepath.Join(ctr, "rootfs"), filepath.Join(ctr, "mounts/0")},
	}); err != nil {
		t.Fatal(err)
	}
	agent := &fakeExecAgent{}
	m.live[podID] = &podRuntime{agent: agent, outputs: map[string]*output{}}

	// Before ExecSync: the spec the old code read is a FIFO, then a
	// symlink to a host file.
	for _, plant := range []func(){
		func() { fifo(t, filepath.Join(ctr, "config.json")) },
		func() { symlink(t, v.file, filepath.Join(ctr, "config.json")) },
	} {
		plant()
		res := within(t, "ExecSync", func() error {
			_, err := m.ExecSync(context.Background(), ctrID, []string{"true"}, time.Second)
			return err
		})
		if res != nil {
			t.Fatalf("ExecSync: %v", res)
		}
		if !strings.Contains(string(agent.process), "FROM=record") {
			t.Errorf("exec process %s was not built from cocoond's record", agent.process)
		}
	}

	// Between ExecSync and RemoveContainer: symlinks in place of the
	// mount points, then of the container's dir itself.
	symlink(t, v.dir, filepath.Join(ctr, "rootfs"))
	symlink(t, v.file, filepath.Join(ctr, "mounts/0"))
	symlink(t, v.fresh, filepath.Join(ctr, "mounts/1"))
	// The container exited (stopping it is the agent's business).
	if _, err := m.containers.update(ctrID, func(c *Container) error { c.State = StateExited; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := within(t, "RemoveContainer", func() error { return m.RemoveContainer(context.Background(), ctrID) }); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	v.check(t)

	// Between RemoveContainer and the pod's end: the VM is gone (so is
	// its agent), the share holds a symlinked dir, a FIFO, and junk.
	delete(m.live, podID)
	symlink(t, v.dir, filepath.Join(pod.ShareDir, "gone"))
	fifo(t, filepath.Join(pod.ShareDir, "hosts"))
	if err := os.WriteFile(filepath.Join(pod.ShareDir, "junk"), make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := within(t, "StopPod", func() error { return m.StopPod(context.Background(), podID) }); err != nil {
		t.Fatalf("StopPod: %v", err)
	}
	if err := within(t, "RemovePod", func() error { return m.RemovePod(context.Background(), podID) }); err != nil {
		t.Fatalf("RemovePod: %v", err)
	}
	v.check(t)
	if _, err := os.Lstat(pod.RunDir); !os.IsNotExist(err) {
		t.Errorf("pod dir left: %v", err)
	}
}

// TestPodShareQuota: the guest cannot make the host hold more than the
// share's size, and the share's tmpfs goes with the pod.
func TestPodShareQuota(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	runDir := filepath.Join(t.TempDir(), "pod")
	share := filepath.Join(runDir, "shared")
	if err := mountShare(share, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(share, unix.MNT_DETACH) })
	err := os.WriteFile(filepath.Join(share, "huge"), make([]byte, 2<<20), 0o644)
	if !errors.Is(err, unix.ENOSPC) {
		t.Errorf("writing 2 MiB into a 1 MiB share: %v, want ENOSPC", err)
	}
	if err := removePodDirs(runDir, share); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(runDir); !os.IsNotExist(err) {
		t.Errorf("pod dir left: %v", err)
	}
}

// TestRecoverReclaimsStrayShares: a share tmpfs no pod record claims (a
// crash before the pod was persisted) is unmounted and removed at startup;
// a recorded pod's share stays.
func TestRecoverReclaimsStrayShares(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	kept, gone := pad("aa"), pad("bb")
	addPod(t, m, kept, "p", "ns", StateNotReady)
	for _, id := range []string{kept, gone} {
		share := filepath.Join(m.opts.RunDir, id, "shared")
		if err := mountShare(share, 1); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(share, unix.MNT_DETACH) })
	}
	if err := m.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(m.opts.RunDir, gone)); !os.IsNotExist(err) {
		t.Errorf("stray pod dir left: %v", err)
	}
	if mounted, err := isMountPoint(filepath.Join(m.opts.RunDir, kept, "shared")); err != nil || !mounted {
		t.Errorf("a recorded pod's share was reclaimed: mounted=%v %v", mounted, err)
	}
}

// unsafeDetacher is a share whose mount points the guest moved: every
// detach finds a symlink on the way.
type unsafeDetacher struct{ fakeMounter }

func (unsafeDetacher) Detach(dst string) error { return vm.ErrUnsafePath }

// TestUnbindAllSurvivesMovedMountPoints: a guest that moved a mount point
// away cannot make its container unremovable; the mount stays in
// virtiofsd's namespace and goes with the VM.
func TestUnbindAllSurvivesMovedMountPoints(t *testing.T) {
	t.Parallel()
	share := t.TempDir()
	ctr := filepath.Join(share, "cid")
	if err := os.MkdirAll(filepath.Join(ctr, "m2/0"), 0o755); err != nil {
		t.Fatal(err)
	}
	symlink(t, "m2", filepath.Join(ctr, "mounts"))
	c := &Container{ID: "cid", Binds: []string{filepath.Join(ctr, "mounts/0")}}
	if err := unbindAll(&unsafeDetacher{}, c, ctr); err != nil {
		t.Fatalf("unbindAll: %v", err)
	}
	if _, err := os.Lstat(ctr); !os.IsNotExist(err) {
		t.Errorf("container share dir left: %v", err)
	}
}
