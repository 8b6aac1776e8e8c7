package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

type testRec struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

func (r testRec) id() string { return r.ID }

func TestStorePersistsAndReloads(t *testing.T) {
	dir := t.TempDir()
	s := newStore[testRec](dir)
	if err := s.load(); err != nil {
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
	s2 := newStore[testRec](dir)
	if err := s2.load(); err != nil {
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

func TestStoreRefusesUnknownVersion(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.json"), []byte(`{"version": 99, "data": {"id": "x"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := newStore[testRec](dir).load(); err == nil {
		t.Fatal("loaded a record of an unknown version")
	}
}

func TestRegistrar(t *testing.T) {
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
