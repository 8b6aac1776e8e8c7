package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/internal/atomicfile"
)

// StateFile is where a VM's State lives inside its run dir.
const StateFile = "vm.json"

// stateVersion is written into vm.json; records from before versioning have
// none (0) and read the same. A newer record is refused (moved aside).
const stateVersion = 1

type versionedState struct {
	Version int `json:"version"`
	*State
}

// SaveState writes st into its run dir atomically and durably. Drivers call
// it before starting any process (the record exists before the resource it
// names) and again as each process starts, so a crash at any point leaves a
// record that leads a restart to what was started.
func SaveState(st *State) error {
	data, err := json.MarshalIndent(versionedState{Version: stateVersion, State: st}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(st.RunDir, StateFile), data, 0o600)
}

// LoadState reads one run dir's record; an unreadable one is moved aside
// (atomicfile.ErrMovedAside), a missing one is os.ErrNotExist.
func LoadState(runDir string, log *logrus.Entry) (*State, error) {
	var st State
	err := atomicfile.Load(filepath.Join(runDir, StateFile), func(data []byte) error {
		v := versionedState{State: &st}
		if err := json.Unmarshal(data, &v); err != nil {
			return err
		}
		if v.Version > stateVersion {
			return fmt.Errorf("VM state version %d, this cocoond reads up to %d", v.Version, stateVersion)
		}
		return nil
	}, log)
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// LoadStates reads every root/*/vm.json; unreadable ones are moved aside and
// skipped (their run dirs are then unclaimed and RemoveOrphans reclaims them).
func LoadStates(root string, log *logrus.Entry) ([]*State, error) {
	dirs, err := runDirs(root)
	if err != nil {
		return nil, err
	}
	var out []*State
	for _, d := range dirs {
		st, err := LoadState(d, log)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, atomicfile.ErrMovedAside) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

func runDirs(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(root, e.Name()))
		}
	}
	return out, nil
}

// RemoveOrphans stops every VM under root that keep does not claim and
// removes what it left (helpers, run dir). A run dir whose record is missing,
// half-written or unreadable (a crash during Create) is reclaimed from the
// processes that name it on their command line; keep then sees a State with
// only RunDir set. It returns the IDs (or run dirs, when unknown) removed.
func RemoveOrphans(ctx context.Context, root string, drivers map[string]Driver, keep func(st *State) bool, log *logrus.Entry) ([]string, error) {
	dirs, err := runDirs(root)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, d := range dirs {
		st, err := LoadState(d, log)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, atomicfile.ErrMovedAside) {
			errs = append(errs, err)
			continue
		}
		if st == nil {
			st = &State{RunDir: d}
		}
		st.RunDir = d // a record never sends us outside root
		if keep(st) {
			continue
		}
		name := st.ID
		if name == "" {
			name = d
		}
		if err := RemoveVM(ctx, st, drivers[st.Driver]); err != nil {
			errs = append(errs, fmt.Errorf("orphan VM %s: %w", name, err))
			continue
		}
		log.WithFields(logrus.Fields{"vm": name, "driver": st.Driver, "runDir": d}).Warn("removed VM no sandbox claims")
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// removeVMTimeout bounds adopting and stopping a VM that is being removed.
const removeVMTimeout = 20 * time.Second

// RemoveVM stops the VM st describes through its driver, or cleans up after it
// when its VMM is already gone or its record is incomplete.
func RemoveVM(ctx context.Context, st *State, d Driver) error {
	if d == nil || st.Pid == 0 {
		return RemoveDead(st) // its driver is not configured any more, or the VMM never recorded
	}
	// A VM that does not answer its driver in time is killed all the same.
	ctx, cancel := context.WithTimeout(ctx, removeVMTimeout)
	defer cancel()
	v, err := d.Adopt(ctx, st)
	if errors.Is(err, ErrNotRunning) {
		return RemoveDead(st) // the driver cleaned up; make sure of the unrecorded rest
	}
	if err != nil {
		// Adopted half-way (say its control socket is gone): kill it.
		return errors.Join(err, RemoveDead(st))
	}
	if err := v.Stop(ctx); err != nil {
		return errors.Join(err, RemoveDead(st))
	}
	return RemoveDead(st)
}

// RemoveDead kills whatever a VM whose VMM died left running (helpers, the
// VMM itself if it still lingers, and any process naming its run dir that the
// record missed) and removes its run dir.
func RemoveDead(st *State) error {
	for _, p := range append(st.Helpers, Process{Name: "vmm", Pid: st.Pid, StartTime: st.StartTime}) {
		if p.Pid == 0 {
			continue
		}
		if w, err := AdoptWatched(p); err == nil {
			_ = w.Kill()
		}
	}
	if st.RunDir == "" {
		return nil
	}
	if err := checkRunDir(st.RunDir); err != nil {
		return err // a damaged record: neither kill by it nor remove it
	}
	return errors.Join(KillReferencing("/proc", st.RunDir), os.RemoveAll(st.RunDir))
}

// checkRunDir refuses a path that cannot be a VM run dir: one that is
// relative or shallow (a damaged record) would match unrelated processes,
// and removing it would remove what is not a VM's.
func checkRunDir(dir string) error {
	if clean := filepath.Clean(dir); !filepath.IsAbs(clean) || strings.Count(clean, "/") < 2 {
		return fmt.Errorf("%q is not a VM run dir", dir)
	}
	return nil
}

// KillReferencing SIGKILLs every process whose command line names a path in
// dir (the VMM's sockets, virtiofsd's --socket-path) and waits for them to
// go. It finds processes a crash kept out of the record.
func KillReferencing(procDir, dir string) error {
	if err := checkRunDir(dir); err != nil {
		return fmt.Errorf("refusing to kill processes naming it: %w", err)
	}
	pids := ProcessesReferencing(procDir, dir)
	for _, p := range pids {
		p.Signal(unix.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for p.Alive() {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s (pid %d) survived SIGKILL", p.Name, p.Pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// ProcessesReferencing lists live processes whose command line holds an
// argument inside dir.
func ProcessesReferencing(procDir, dir string) []Process {
	dir = filepath.Clean(dir)
	entries, _ := os.ReadDir(procDir)
	var out []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(procDir, e.Name(), "cmdline"))
		if err != nil || !mentions(string(cmdline), dir) {
			continue
		}
		st, err := StartTime(pid)
		if err != nil {
			continue
		}
		p := Process{Name: "pid " + e.Name(), Pid: pid, StartTime: st}
		if p.Alive() {
			out = append(out, p)
		}
	}
	return out
}

// mentions reports whether a NUL-separated command line holds dir or a path
// below it, alone or as the value of an option (--socket-path=DIR/x,
// path=DIR/x in a -chardev list).
func mentions(cmdline, dir string) bool {
	for _, arg := range strings.Split(cmdline, "\x00") {
		for i := strings.Index(arg, dir); i >= 0; {
			end := i + len(dir)
			before := i == 0 || strings.ContainsRune("=,:", rune(arg[i-1]))
			after := end == len(arg) || arg[end] == '/' || arg[end] == ','
			if before && after {
				return true
			}
			j := strings.Index(arg[end:], dir)
			if j < 0 {
				break
			}
			i = end + j
		}
	}
	return false
}
