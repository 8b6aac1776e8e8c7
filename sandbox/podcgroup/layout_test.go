package podcgroup

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/cgroups"
)

// TestLibraryConfigKeepsProcessesOutOfTheCgroupfsPodCgroup: with cgroupfs
// the pod's processes go in the sandbox leaf, everything else (making,
// killing, removing) addresses the pod cgroup above it; a systemd scope is
// both.
func TestLibraryConfigKeepsProcessesOutOfTheCgroupfsPodCgroup(t *testing.T) {
	fs, err := For(Cgroupfs, "/kubepods/burstable/pod"+testUID, testPod)
	if err != nil {
		t.Fatal(err)
	}
	sd, err := For(Systemd, "kubepods-burstable-pod"+testUID+".slice", testPod)
	if err != nil {
		t.Fatal(err)
	}
	podDir := "/kubepods/burstable/pod" + testUID + "/cocoon-" + testPod
	scope := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + testUID + ".slice/cocoon-" + testPod + ".scope"
	for _, tt := range []struct {
		name      string
		ref       Ref
		procs     bool
		wantPath  string // cgroupfs: the library's Path
		wantScope string // systemd: the unit the library manages
		wantProcs string // ProcsPath
	}{
		{name: "cgroupfs pod cgroup", ref: fs, wantPath: podDir, wantProcs: podDir + "/sandbox"},
		{name: "cgroupfs processes", ref: fs, procs: true, wantPath: podDir + "/sandbox", wantProcs: podDir + "/sandbox"},
		{name: "systemd pod scope", ref: sd, wantScope: "cocoon-" + testPod + ".scope", wantProcs: scope},
		{name: "systemd processes", ref: sd, procs: true, wantScope: "cocoon-" + testPod + ".scope", wantProcs: scope},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cg, err := libraryConfig(tt.ref, tt.procs)
			if err != nil {
				t.Fatal(err)
			}
			if cg.Path != tt.wantPath {
				t.Errorf("library path %q, want %q", cg.Path, tt.wantPath)
			}
			if tt.wantScope != "" {
				unit := cg.ScopePrefix + "-" + cg.Name + ".scope"
				if !cg.Systemd || cg.Parent != tt.ref.Parent || unit != tt.wantScope || !cg.SkipDevices {
					t.Errorf("systemd config %+v, want scope %s in %s without device rules", cg, tt.wantScope, tt.ref.Parent)
				}
			} else if cg.Systemd {
				t.Errorf("cgroupfs ref opened with systemd: %+v", cg)
			}
			if cg.Resources == nil {
				t.Error("no Resources: the library dereferences them")
			}
			got, err := tt.ref.ProcsPath()
			if err != nil || got != tt.wantProcs {
				t.Errorf("ProcsPath = %q, %v; want %q", got, err, tt.wantProcs)
			}
			// The leaf is no pod cgroup: a sweep must never take it alone.
			if _, ok := refFromPath(got); ok && tt.ref.Driver == Cgroupfs {
				t.Errorf("the sweep would take the leaf %s as a pod cgroup", got)
			}
		})
	}
}

// fakeLibrary is the library's manager for one cgroup: a directory that
// exists once applied; it logs what is asked of it.
type fakeLibrary struct {
	cgroups.Manager // unused methods panic
	dir             string
	procs           bool
	log             *[]string
	pids            []int
}

func (f *fakeLibrary) note(op string) {
	where := "pod"
	if f.procs {
		where = "leaf"
	}
	*f.log = append(*f.log, op+" "+where)
}

func (f *fakeLibrary) GetPaths() map[string]string { return map[string]string{"": f.dir} }

func (f *fakeLibrary) Apply(pid int) error {
	f.note("apply")
	if pid > 0 {
		f.pids = append(f.pids, pid)
	}
	return os.MkdirAll(f.dir, 0o755)
}

func (f *fakeLibrary) AddPid(_ string, pid int) error {
	f.note("add-pid")
	f.pids = append(f.pids, pid)
	return nil
}

func (f *fakeLibrary) GetAllPids() ([]int, error) { f.note("list-pids"); return nil, nil }

func (f *fakeLibrary) Destroy() error { f.note("destroy"); return os.RemoveAll(f.dir) }

// TestManagerJoinsTheLeafAndRemovesThePodCgroup checks each operation's
// target through a fake library: only Join addresses the processes' leaf.
func TestManagerJoinsTheLeafAndRemovesThePodCgroup(t *testing.T) {
	root := t.TempDir()
	var log []string
	m := &Manager{driver: Cgroupfs, procDir: fakeProc(t, map[int]int{10: 1, 11: 10}), open: func(ref Ref, procs bool) (cgroups.Manager, error) {
		cg, err := libraryConfig(ref, procs)
		if err != nil {
			return nil, err
		}
		return &fakeLibrary{dir: filepath.Join(root, cg.Path), procs: procs, log: &log}, nil
	}}
	ref, err := m.For("/kubepods/pod"+testUID, testPod)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, step := range []struct {
		name string
		run  func() error
		want []string
	}{
		{"create", func() error { return m.Create(ref) }, []string{"apply pod"}},
		// The leaf does not exist yet: Apply makes it around the first
		// process; the forked child follows.
		{"join", func() error { return m.Join(ctx, ref, 10) }, []string{"apply leaf", "add-pid leaf"}},
		{"kill", func() error { return m.Kill(ctx, ref) }, []string{"list-pids pod"}},
		{"remove", func() error { return m.Remove(ctx, ref) }, []string{"list-pids pod", "destroy pod"}},
	} {
		log = nil
		if err := step.run(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if !slices.Equal(log, step.want) {
			t.Errorf("%s asked the library %v, want %v", step.name, log, step.want)
		}
	}
}
