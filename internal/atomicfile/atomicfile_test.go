package atomicfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

func TestWriteFileReplacesWholeAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rec.json")
	for _, body := range []string{`{"v":1}`, `{"v":2}`} {
		if err := WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != body {
			t.Fatalf("got %q, want %q", got, body)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("want only rec.json, got %v", entries)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
}

type versioned struct {
	Version int `json:"version"`
}

func decodeV1(data []byte) error {
	var v versioned
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	if v.Version != 1 {
		return fmt.Errorf("version %d", v.Version)
	}
	return nil
}

func TestLoadMovesBadRecordsAsideAndLogs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(path string) error
	}{
		{"truncated JSON", func(p string) error { return os.WriteFile(p, []byte(`{"version":1,"da`), 0o600) }},
		{"empty file", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
		{"wrong version", func(p string) error { return os.WriteFile(p, []byte(`{"version":99}`), 0o600) }},
		{"directory in place of a file", func(p string) error { return os.Mkdir(p, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "rec.json")
			if err := tc.setup(path); err != nil {
				t.Fatal(err)
			}
			logger, hook := test.NewNullLogger()
			err := Load(path, decodeV1, logrus.NewEntry(logger))
			if !errors.Is(err, ErrMovedAside) {
				t.Fatalf("Load: %v, want ErrMovedAside", err)
			}
			if _, err := os.Lstat(path); !os.IsNotExist(err) {
				t.Fatalf("bad record still in place: %v", err)
			}
			moved, _ := filepath.Glob(path + ".bad-*")
			if len(moved) != 1 {
				t.Fatalf("moved aside: %v", moved)
			}
			e := hook.LastEntry()
			if e == nil || e.Level != logrus.ErrorLevel || e.Data["path"] != path {
				t.Fatalf("want an error log line naming %s, got %+v", path, e)
			}
		})
	}
}

func TestLoadGoodAndMissing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rec.json")
	logger, _ := test.NewNullLogger()
	if err := Load(path, decodeV1, logrus.NewEntry(logger)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	if err := WriteFile(path, []byte(`{"version":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Load(path, decodeV1, logrus.NewEntry(logger)); err != nil {
		t.Fatalf("good record: %v", err)
	}
}

func TestIsTemp(t *testing.T) {
	dir := t.TempDir()
	f, err := os.CreateTemp(dir, ".rec.json.tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if !IsTemp(f.Name()) || IsTemp(filepath.Join(dir, "rec.json")) || !strings.HasPrefix(filepath.Base(f.Name()), ".") {
		t.Fatal("IsTemp misjudges")
	}
}
