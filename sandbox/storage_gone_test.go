package sandbox

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"go.podman.io/storage"
)

// TestIsUnknownContainer: removing a container whose storage an earlier,
// interrupted removal already deleted goes on; any other storage failure
// stops it, even one whose message happens to say "container not known".
// The unknown-ID errors come from a real (vfs) store.
func TestIsUnknownContainer(t *testing.T) {
	dir := t.TempDir()
	store, err := storage.GetStore(storage.StoreOptions{RunRoot: filepath.Join(dir, "run"), GraphRoot: filepath.Join(dir, "graph"), GraphDriverName: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = store.Shutdown(true) })
	_, unmountErr := store.Unmount("gone", true)
	deleteErr := store.DeleteContainer("gone")

	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"Unmount of an unknown ID", unmountErr, true},
		{"DeleteContainer of an unknown ID", deleteErr, true},
		{"wrapped ErrContainerUnknown", fmt.Errorf("container c: %w", storage.ErrContainerUnknown), true},
		{"other error naming the words", errors.New(`layer of "container not known" broken: input/output error`), false},
		{"other storage error", storage.ErrDuplicateName, false},
	} {
		if got := isUnknownContainer(tt.err); got != tt.want {
			t.Errorf("%s: isUnknownContainer(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}
