package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

func TestValidateReadOnly(t *testing.T) {
	private, h2c := runtimeapi.MountPropagation_PROPAGATION_PRIVATE, runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
	for _, tc := range []struct {
		name string
		mnt  *runtimeapi.Mount
		ok   bool
	}{
		{"plain rw", &runtimeapi.Mount{ContainerPath: "/m"}, true},
		{"plain ro", &runtimeapi.Mount{ContainerPath: "/m", Readonly: true, Propagation: h2c}, true},
		{"rro private", &runtimeapi.Mount{ContainerPath: "/m", Readonly: true, RecursiveReadOnly: true, Propagation: private}, true},
		{"rro without readonly", &runtimeapi.Mount{ContainerPath: "/m", RecursiveReadOnly: true}, false},
		{"rro host to container", &runtimeapi.Mount{ContainerPath: "/m", Readonly: true, RecursiveReadOnly: true, Propagation: h2c}, false},
		{"rro bidirectional", &runtimeapi.Mount{ContainerPath: "/m", Readonly: true, RecursiveReadOnly: true,
			Propagation: runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateReadOnly(tc.mnt)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("err = %v, want InvalidArgument", err)
			}
		})
	}
}

// TestEnforceReadOnly binds a host dir holding a tmpfs, as critest's
// read-only mount specs do, and checks what stays writable on the host side
// of the share (the side virtiofsd writes through).
func TestEnforceReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	for _, tc := range []struct {
		name          string
		mnt           *runtimeapi.Mount
		guestReadOnly bool
		topWritable   bool
		subWritable   bool
	}{
		{"rw", &runtimeapi.Mount{}, false, true, true},
		{"ro keeps submounts writable", &runtimeapi.Mount{Readonly: true}, false, false, true},
		{"recursive ro", &runtimeapi.Mount{Readonly: true, RecursiveReadOnly: true}, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, share := t.TempDir(), t.TempDir()
			sub := filepath.Join(src, "tmpfs")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("none", sub, "tmpfs", 0, ""); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })
			c := &Container{}
			dst := filepath.Join(share, "mounts/0")
			if err := bind(c, src, dst, true); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unbindAll(c, share) })

			guestRO, err := enforceReadOnly(tc.mnt, src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if guestRO != tc.guestReadOnly {
				t.Errorf("guest read-only = %v, want %v", guestRO, tc.guestReadOnly)
			}
			writable := func(dir string) bool {
				err := os.WriteFile(filepath.Join(dir, "probe"), nil, 0o644)
				if err != nil && !errors.Is(err, unix.EROFS) {
					t.Fatalf("write in %s: %v", dir, err)
				}
				return err == nil
			}
			if got := writable(dst); got != tc.topWritable {
				t.Errorf("top writable = %v, want %v", got, tc.topWritable)
			}
			if got := writable(filepath.Join(dst, "tmpfs")); got != tc.subWritable {
				t.Errorf("submount writable = %v, want %v", got, tc.subWritable)
			}
			if !writable(src) {
				t.Error("the source itself must stay writable")
			}
		})
	}
}

func TestHasSubmounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	if nested, err := hasSubmounts(dir); err != nil || nested {
		t.Fatalf("empty dir: nested=%v err=%v", nested, err)
	}
	sub := filepath.Join(dir, "a b")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", sub, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(sub, unix.MNT_DETACH)
	if nested, err := hasSubmounts(dir); err != nil || !nested {
		t.Fatalf("dir with a tmpfs below: nested=%v err=%v", nested, err)
	}
	if nested, err := hasSubmounts(sub); err != nil || nested {
		t.Fatalf("the mount point itself is not below: nested=%v err=%v", nested, err)
	}
}
