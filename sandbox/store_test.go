package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

type testRec struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

func (r testRec) id() string { return r.ID }

func TestStorePersistsAndReloads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newStore(dir, storeHooks[testRec]{})
	if err := s.load(testLog()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"abc123", "abd456", "xyz"} {
		if err := s.add(testRec{ID: id, State: "READY"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.add(testRec{ID: "xyz"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate add: %v", err)
	}
	if _, err := s.update("abc123", func(r *testRec) error { r.State = "NOTREADY"; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.update("abc123", func(r *testRec) error { r.State = "BROKEN"; return errors.New("refused") }); err == nil {
		t.Fatal("refused update applied")
	}
	if err := s.remove("xyz"); err != nil {
		t.Fatal(err)
	}

	// A new store over the same dir sees exactly what was persisted.
	s2 := newStore(dir, storeHooks[testRec]{})
	if err := s2.load(testLog()); err != nil {
		t.Fatal(err)
	}
	got := s2.list()
	if len(got) != 2 || got[0].ID != "abc123" || got[0].State != "NOTREADY" {
		t.Fatalf("reloaded %+v", got)
	}

	for _, tt := range []struct {
		prefix string
		want   string
		err    error
	}{
		{"abc", "abc123", nil},
		{"abc123", "abc123", nil},
		{"ab", "", errdefs.ErrInvalidArgument},
		{"nope", "", errdefs.ErrNotFound},
		{"", "", errdefs.ErrInvalidArgument},
	} {
		id, err := s2.resolve(tt.prefix)
		if id != tt.want || !errors.Is(err, tt.err) && !(err == nil && tt.err == nil) {
			t.Errorf("resolve(%q) = %q, %v", tt.prefix, id, err)
		}
	}
}

// TestStoreMovesBadRecordsAside: a record that cannot be read is moved aside
// and the good ones still load, so one bad file never stops the daemon.
func TestStoreMovesBadRecordsAside(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(path string) error
	}{
		{"truncated JSON", func(p string) error { return os.WriteFile(p, []byte(`{"version": 1, "data": {"id": "x`), 0o600) }},
		{"empty file", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
		{"wrong version", func(p string) error { return os.WriteFile(p, []byte(`{"version": 99, "data": {"id": "x"}}`), 0o600) }},
		{"directory in place of a file", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"record of another id", func(p string) error { return os.WriteFile(p, []byte(`{"version": 1, "data": {"id": "y"}}`), 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			good := newStore(dir, storeHooks[testRec]{})
			if err := good.load(testLog()); err != nil {
				t.Fatal(err)
			}
			if err := good.add(testRec{ID: "good", State: "READY"}); err != nil {
				t.Fatal(err)
			}
			bad := filepath.Join(dir, "x.json")
			if err := tc.setup(bad); err != nil {
				t.Fatal(err)
			}
			s := newStore(dir, storeHooks[testRec]{})
			if err := s.load(testLog()); err != nil {
				t.Fatalf("load stopped at a bad record: %v", err)
			}
			if got := s.list(); len(got) != 1 || got[0].ID != "good" {
				t.Fatalf("loaded %+v, want only the good record", got)
			}
			if _, err := os.Lstat(bad); !os.IsNotExist(err) {
				t.Fatalf("bad record still in place: %v", err)
			}
			if moved, _ := filepath.Glob(bad + ".bad-*"); len(moved) != 1 {
				t.Fatalf("bad record not kept aside: %v", moved)
			}
		})
	}
}

func TestRegistrar(t *testing.T) {
	t.Parallel()
	r := newRegistrar()
	if err := r.reserve("pod_ns_uid_0", "a"); err != nil {
		t.Fatal(err)
	}
	if err := r.reserve("pod_ns_uid_0", "a"); err != nil {
		t.Fatalf("same owner again: %v", err)
	}
	err := r.reserve("pod_ns_uid_0", "b")
	var taken *nameTakenError
	if !errors.As(err, &taken) || taken.owner != "a" || !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("other owner: %v", err)
	}
	r.release("pod_ns_uid_0")
	if err := r.reserve("pod_ns_uid_0", "b"); err != nil {
		t.Fatal(err)
	}
}

func testLog() *logrus.Entry {
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	return logrus.NewEntry(log)
}
