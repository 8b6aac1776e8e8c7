package cni

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestBadNetworkRecordIsMovedAsideNotFatal: Teardown of a pod whose record
// cannot be read moves the record aside and succeeds (the daemon carries
// on), and the good records of other pods still tear down with DEL.
func TestBadNetworkRecordIsMovedAsideNotFatal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(path string) error
	}{
		{"truncated JSON", func(p string) error { return os.WriteFile(p, []byte(`{"version":1,"id":"bad","conf`), 0o600) }},
		{"empty file", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
		{"wrong version", func(p string) error { return os.WriteFile(p, []byte(`{"version":99,"id":"bad"}`), 0o600) }},
		{"directory in place of a file", func(p string) error { return os.Mkdir(p, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			m, f, _ := fakeManager(t, dir)
			ctx := context.Background()
			if _, err := m.Setup(ctx, PodNetwork{ID: "good", NetnsPath: "/run/netns/good"}); err != nil {
				t.Fatal(err)
			}
			bad := statePath(dir, "bad")
			if err := tc.setup(bad); err != nil {
				t.Fatal(err)
			}
			ids, err := m.Attached()
			if err != nil || len(ids) != 2 {
				t.Fatalf("Attached = %v, %v; want both records", ids, err)
			}
			for _, id := range ids {
				if err := m.Teardown(ctx, id); err != nil {
					t.Fatalf("Teardown(%s): %v", id, err)
				}
			}
			if _, err := os.Lstat(bad); !os.IsNotExist(err) {
				t.Fatalf("bad record still in place: %v", err)
			}
			if moved, _ := filepath.Glob(bad + ".bad-*"); len(moved) != 1 {
				t.Fatalf("bad record not kept aside: %v", moved)
			}
			if len(f.calls) != 2 || f.calls[1] != "DEL" {
				t.Fatalf("calls %v, want ADD then one DEL (of the good pod)", f.calls)
			}
			if ids, _ := m.Attached(); len(ids) != 0 {
				t.Fatalf("still attached: %v", ids)
			}
		})
	}
}
