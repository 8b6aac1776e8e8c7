package ocispec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// TestLocalhostSeccompProfileIsBounded: the profile path comes from the
// request, so a FIFO, a device or a huge file is refused, never read forever.
func TestLocalhostSeccompProfileIsBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.json")
	if err := os.WriteFile(huge, []byte(`{"defaultAction":"SCMP_ACT_ALLOW","x":"`+strings.Repeat("a", maxProfileSize)+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, []byte(`{"defaultAction":"SCMP_ACT_ALLOW"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, want string
	}{
		{fifo, "not a regular file"},
		{"/dev/zero", "not a regular file"},
		{dir, "not a regular file"},
		{huge, "more than"},
		{good, ""},
	} {
		done := make(chan error, 1)
		go func() { _, err := loadSeccomp(tc.path, nil); done <- err }()
		select {
		case err := <-done:
			if tc.want == "" {
				if err != nil {
					t.Errorf("%s: %v", tc.path, err)
				}
				continue
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), tc.want) {
				t.Errorf("%s: %v, want InvalidArgument containing %q", tc.path, err, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: loading the profile hangs", tc.path)
		}
	}
}
