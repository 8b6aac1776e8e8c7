// Package sandbox holds pods and their containers: their state machine
// (state.go: the states, the allowed transitions and their diagram), the
// store that persists them, and the work of running them in VMs.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/internal/atomicfile"
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
// Whoever waits for a record to change waits on a channel (watch), never by
// polling.
type store[T record] struct {
	dir  string
	mu   sync.RWMutex
	recs map[string]*T
	// changed holds, per record someone watches, a channel closed at the
	// record's next update or removal (and then forgotten: the next watch
	// makes a new one).
	changed map[string]chan struct{}
	hooks   storeHooks[T]
}

// storeHooks let a kind of record take part in the store's writes.
type storeHooks[T any] struct {
	// prepare readies a record the store takes in (added, loaded, or
	// updated; prev is nil unless updated): it decodes what reads need, so
	// that reads never decode.
	prepare func(prev, next *T)
	// check refuses an update (prev → next) the record's state machine
	// does not allow; nothing changes then.
	check func(prev, next *T) error
}

type envelope[T any] struct {
	Version int `json:"version"`
	Data    T   `json:"data"`
}

func newStore[T record](dir string, hooks storeHooks[T]) *store[T] {
	return &store[T]{dir: dir, recs: map[string]*T{}, changed: map[string]chan struct{}{}, hooks: hooks}
}

func (s *store[T]) prepare(prev, next *T) {
	if s.hooks.prepare != nil {
		s.hooks.prepare(prev, next)
	}
}

// notify wakes whoever watches id; the caller holds s.mu.
func (s *store[T]) notify(id string) {
	if ch, ok := s.changed[id]; ok {
		close(ch)
		delete(s.changed, id)
	}
}

func (s *store[T]) path(id string) string { return filepath.Join(s.dir, id+".json") }

// load reads every record in dir. A record that cannot be read is moved
// aside with a loud log line and skipped: one bad file must not stop the
// daemon, and whatever it described is then reclaimed as unclaimed.
func (s *store[T]) load(log *logrus.Entry) error {
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
		var rec T
		err := atomicfile.Load(f, func(data []byte) error {
			var env envelope[T]
			if err := json.Unmarshal(data, &env); err != nil {
				return err
			}
			if env.Version != metadataVersion {
				return fmt.Errorf("metadata version %d, this cocoond knows %d", env.Version, metadataVersion)
			}
			if env.Data.id()+".json" != filepath.Base(f) {
				return fmt.Errorf("record of %q in the file of another", env.Data.id())
			}
			rec = env.Data
			s.prepare(nil, &rec)
			return nil
		}, log)
		if errors.Is(err, atomicfile.ErrMovedAside) || errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		s.recs[rec.id()] = &rec
	}
	return nil
}

func (s *store[T]) persist(rec *T) error {
	data, err := json.Marshal(envelope[T]{Version: metadataVersion, Data: *rec})
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path((*rec).id()), data, 0o600)
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
	s.prepare(nil, &rec)
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
	if s.hooks.check != nil {
		if err := s.hooks.check(r, &next); err != nil {
			return zero, err
		}
	}
	if err := s.persist(&next); err != nil {
		return zero, err
	}
	s.prepare(r, &next)
	*r = next
	s.notify(id)
	return next, nil
}

func (s *store[T]) remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.recs, id)
	s.notify(id)
	return atomicfile.Remove(s.path(id))
}

// watch returns the record and a channel closed at its next change or
// removal, read at the same instant so no change can fall between them.
func (s *store[T]) watch(id string) (T, <-chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok {
		var zero T
		return zero, nil, false
	}
	ch, ok := s.changed[id]
	if !ok {
		ch = make(chan struct{})
		s.changed[id] = ch
	}
	return *r, ch, true
}

// waitFor returns once done holds for the record or the record is gone,
// woken by each change of it; it returns the context's error if that ends
// first.
func (s *store[T]) waitFor(ctx context.Context, id string, done func(T) bool) error {
	for {
		rec, changed, ok := s.watch(id)
		if !ok || done(rec) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
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
