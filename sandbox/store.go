// Package sandbox holds pods and their containers: their state machine, the
// store that persists them, and the work of running them in VMs.
//
// Pod states:
//
//	RunPodSandbox ──► READY ──StopPodSandbox / VM died──► NOTREADY ──RemovePodSandbox──► (gone)
//	      │ (any step fails: everything undone, nothing stored)
//	      ▼
//	   (gone)
//
// Container states:
//
//	CreateContainer ──► CREATED ──StartContainer──► RUNNING ──exit / StopContainer / pod stop──► EXITED
//	        RemoveContainer removes CREATED and EXITED containers (and RUNNING ones after killing them).
package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// metadataVersion is written into every persisted record; a reader refuses
// versions it does not know instead of misreading them.
const metadataVersion = 1

// record is anything the store persists.
type record interface {
	id() string
}

// store keeps records in memory, persisted one JSON file each under dir. Reads
// return copies; changes go through update so the file and memory agree.
type store[T record] struct {
	dir  string
	mu   sync.RWMutex
	recs map[string]*T
}

type envelope[T any] struct {
	Version int `json:"version"`
	Data    T   `json:"data"`
}

func newStore[T record](dir string) *store[T] {
	return &store[T]{dir: dir, recs: map[string]*T{}}
}

func (s *store[T]) path(id string) string { return filepath.Join(s.dir, id+".json") }

// load reads every record in dir.
func (s *store[T]) load() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(s.dir, "*.json"))
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var env envelope[T]
		if err := json.Unmarshal(data, &env); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if env.Version != metadataVersion {
			return fmt.Errorf("%s: metadata version %d, this cocoond knows %d", f, env.Version, metadataVersion)
		}
		rec := env.Data
		s.recs[rec.id()] = &rec
	}
	return nil
}

func (s *store[T]) persist(rec *T) error {
	data, err := json.Marshal(envelope[T]{Version: metadataVersion, Data: *rec})
	if err != nil {
		return err
	}
	id := (*rec).id()
	tmp := s.path(id) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path(id))
}

// add stores a new record.
func (s *store[T]) add(rec T) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.recs[rec.id()]; dup {
		return fmt.Errorf("%w: %s", errdefs.ErrAlreadyExists, rec.id())
	}
	if err := s.persist(&rec); err != nil {
		return err
	}
	s.recs[rec.id()] = &rec
	return nil
}

// get returns a copy of the record.
func (s *store[T]) get(id string) (T, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.recs[id]
	if !ok {
		var zero T
		return zero, false
	}
	return *r, true
}

// update changes a record under the store's lock and persists it; fn may
// refuse by returning an error, and then nothing changes.
func (s *store[T]) update(id string, fn func(*T) error) (T, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var zero T
	r, ok := s.recs[id]
	if !ok {
		return zero, fmt.Errorf("%w: %s", errdefs.ErrNotFound, id)
	}
	next := *r
	if err := fn(&next); err != nil {
		return zero, err
	}
	if err := s.persist(&next); err != nil {
		return zero, err
	}
	*r = next
	return next, nil
}

func (s *store[T]) remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.recs, id)
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// list returns copies of every record, sorted by ID for stable output.
func (s *store[T]) list() []T {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]T, 0, len(s.recs))
	for _, r := range s.recs {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id() < out[j].id() })
	return out
}

// resolve finds a full ID from a unique prefix (crictl users type short IDs).
func (s *store[T]) resolve(prefix string) (string, error) {
	if prefix == "" {
		return "", fmt.Errorf("%w: empty id", errdefs.ErrInvalidArgument)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.recs[prefix]; ok {
		return prefix, nil
	}
	var match string
	for id := range s.recs {
		if strings.HasPrefix(id, prefix) {
			if match != "" {
				return "", fmt.Errorf("%w: %q matches more than one", errdefs.ErrInvalidArgument, prefix)
			}
			match = id
		}
	}
	if match == "" {
		return "", fmt.Errorf("%w: %q", errdefs.ErrNotFound, prefix)
	}
	return match, nil
}

// registrar reserves names so two pods (or two containers of a pod) never
// share one, and kubelet's retries find the first reservation.
type registrar struct {
	mu    sync.Mutex
	names map[string]string // name → id
}

func newRegistrar() *registrar { return &registrar{names: map[string]string{}} }

// reserve claims name for id; a name held by another id is ErrAlreadyExists
// carrying that id.
func (r *registrar) reserve(name, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if owner, ok := r.names[name]; ok && owner != id {
		return &nameTakenError{name: name, owner: owner}
	}
	r.names[name] = id
	return nil
}

func (r *registrar) release(name string) {
	r.mu.Lock()
	delete(r.names, name)
	r.mu.Unlock()
}

type nameTakenError struct{ name, owner string }

func (e *nameTakenError) Error() string {
	return fmt.Sprintf("name %q is reserved for %s", e.name, e.owner)
}

func (e *nameTakenError) Unwrap() error { return errdefs.ErrAlreadyExists }
