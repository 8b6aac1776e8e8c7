package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containernetworking/cni/libcni"

	"github.com/cocoon-runtime/cocoon/internal/atomicfile"
)

// stateVersion changes when the record's meaning changes; a newer cocoond
// reads older records, an older one refuses newer ones.
const stateVersion = 1

// state is the record of one pod's attachment, <StateDir>/<id>.json. It is
// written before ADD runs, so a crash in the middle still leaves what DEL
// needs, and holds the exact configuration ADD used: DEL must run the same
// plugins with the same arguments even if /etc/cni/net.d changed since.
type state struct {
	Version  int             `json:"version"`
	ID       string          `json:"id"`
	ConfFile string          `json:"confFile"`
	ConfList json.RawMessage `json:"confList"`
	Runtime  runtimeState    `json:"runtime"`
	// Result is nil until ADD succeeded.
	Result *Result `json:"result,omitempty"`
}

// runtimeState is libcni.RuntimeConf in a stable JSON form.
type runtimeState struct {
	ContainerID    string         `json:"containerID"`
	NetNS          string         `json:"netns"`
	IfName         string         `json:"ifName"`
	Args           [][2]string    `json:"args,omitempty"`
	CapabilityArgs map[string]any `json:"capabilityArgs,omitempty"`
}

func (r runtimeState) conf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID:    r.ContainerID,
		NetNS:          r.NetNS,
		IfName:         r.IfName,
		Args:           r.Args,
		CapabilityArgs: r.CapabilityArgs,
	}
}

func (s *state) list() (*libcni.NetworkConfigList, error) {
	l, err := libcni.NetworkConfFromBytes(s.ConfList)
	if err != nil {
		return nil, fmt.Errorf("network configuration of %s: %w", s.ID, err)
	}
	return l, nil
}

func statePath(dir, id string) string { return filepath.Join(dir, id+".json") }

// loadState returns the record, or an error wrapping os.ErrNotExist. A
// record that cannot be read (truncated, empty, a newer version, a directory
// in its place) is moved aside with a loud log line and reads as absent: one
// bad file must not stop the daemon, though what it held (the IP lease) can
// then only be released by hand.
func (m *Manager) loadState(id string) (*state, error) {
	var s state
	err := atomicfile.Load(statePath(m.opts.StateDir, id), func(data []byte) error {
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		if s.Version > stateVersion {
			return fmt.Errorf("network state has version %d, this cocoond reads up to %d", s.Version, stateVersion)
		}
		if s.ID != id {
			return fmt.Errorf("network state of %q in the file of %q", s.ID, id)
		}
		return nil
	}, m.opts.Log.WithField("pod", id))
	if errors.Is(err, atomicfile.ErrMovedAside) {
		return nil, fmt.Errorf("network state of %s: %w: %w", id, os.ErrNotExist, err)
	}
	if err != nil {
		return nil, err
	}
	return &s, nil
}

// save writes the record atomically and durably (temp file, fsync, rename,
// fsync of the directory), so a crash leaves the old record or the new one,
// never half of one.
func (s *state) save(dir string) error {
	s.Version = stateVersion
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(statePath(dir, s.ID), data, 0o600); err != nil {
		return fmt.Errorf("saving network state of %s: %w", s.ID, err)
	}
	return nil
}

func removeState(dir, id string) error {
	if err := os.Remove(statePath(dir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(dir)
}

// keyedMutex serializes operations on one pod without making pods wait for
// each other: ADDs of different pods run in parallel.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
