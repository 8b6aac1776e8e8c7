package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"
)

// StateFile is where a VM's State lives inside its run dir.
const StateFile = "vm.json"

// SaveState writes st into its run dir atomically.
func SaveState(st *State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(st.RunDir, StateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(st.RunDir, StateFile))
}

// LoadStates reads every root/*/vm.json.
func LoadStates(root string) ([]*State, error) {
	files, err := filepath.Glob(filepath.Join(root, "*", StateFile))
	if err != nil {
		return nil, err
	}
	var out []*State
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var st State
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, &st)
	}
	return out, nil
}

// RemoveOrphans stops every VM under root whose sandbox keep does not claim,
// and removes what dead ones left (helpers, run dir). It returns their IDs.
func RemoveOrphans(ctx context.Context, root string, drivers map[string]Driver, keep func(id string) bool, log *logrus.Entry) ([]string, error) {
	states, err := LoadStates(root)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, st := range states {
		if keep(st.ID) {
			continue
		}
		if err := RemoveVM(ctx, st, drivers[st.Driver]); err != nil {
			errs = append(errs, fmt.Errorf("orphan VM %s: %w", st.ID, err))
			continue
		}
		log.WithFields(logrus.Fields{"vm": st.ID, "driver": st.Driver}).Info("removed VM whose sandbox no longer exists")
		removed = append(removed, st.ID)
	}
	return removed, errors.Join(errs...)
}

// RemoveVM stops the VM st describes through its driver, or cleans up after it
// when its VMM is already gone.
func RemoveVM(ctx context.Context, st *State, d Driver) error {
	if d == nil {
		return RemoveDead(st) // its driver is not configured any more
	}
	v, err := d.Adopt(ctx, st)
	if errors.Is(err, ErrNotRunning) {
		return nil // the driver cleaned up after the dead VM
	}
	if err != nil {
		return err
	}
	return v.Stop(ctx)
}

// RemoveDead kills whatever a VM whose VMM died left running (helpers, or the
// VMM itself if it still lingers) and removes its run dir.
func RemoveDead(st *State) error {
	for _, p := range append(st.Helpers, Process{Name: "vmm", Pid: st.Pid, StartTime: st.StartTime}) {
		if w, err := AdoptWatched(p); err == nil {
			_ = w.Kill()
		}
	}
	return os.RemoveAll(st.RunDir)
}
