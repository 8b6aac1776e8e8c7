package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/vm"
)

func TestValidateReadOnly(t *testing.T) {
	t.Parallel()
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

func TestReadOnlyMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	plain := t.TempDir()
	nested := t.TempDir()
	sub := filepath.Join(nested, "tmpfs")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", sub, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(sub, unix.MNT_DETACH)
	for _, tc := range []struct {
		name    string
		mnt     *runtimeapi.Mount
		src     string
		share   vm.ReadOnly
		guestRO bool
	}{
		{"rw", &runtimeapi.Mount{}, nested, vm.Writable, false},
		{"ro without submounts: read-only in the guest too", &runtimeapi.Mount{Readonly: true}, plain, vm.ReadOnlyTop, true},
		{"ro with a submount: only the share enforces it", &runtimeapi.Mount{Readonly: true}, nested, vm.ReadOnlyTop, false},
		{"recursive ro", &runtimeapi.Mount{Readonly: true, RecursiveReadOnly: true}, nested, vm.ReadOnlyRecursive, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			share, guestRO, err := readOnlyMode(tc.mnt, tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if share != tc.share || guestRO != tc.guestRO {
				t.Errorf("mode = %v, guest read-only %v; want %v, %v", share, guestRO, tc.share, tc.guestRO)
			}
		})
	}
}

// fakeMounter records attaches and detaches.
type fakeMounter struct {
	attached, detached []string
	failAttach         error
}

func (f *fakeMounter) Attach(src, dst string, ro vm.ReadOnly) error {
	if f.failAttach != nil {
		return f.failAttach
	}
	f.attached = append(f.attached, dst)
	return nil
}

func (f *fakeMounter) Detach(dst string) error { f.detached = append(f.detached, dst); return nil }

func TestBindAndUnbindAll(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	share := filepath.Join(t.TempDir(), "ctr")
	sm := &fakeMounter{}
	c := &Container{}
	if err := bind(sm, c, src, filepath.Dir(share), filepath.Join(share, "rootfs"), true, vm.Writable); err != nil {
		t.Fatal(err)
	}
	if err := bind(sm, c, filepath.Join(src, "file"), filepath.Dir(share), filepath.Join(share, "mounts/0"), false, vm.ReadOnlyTop); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(share, "mounts/0")); err != nil || st.IsDir() {
		t.Fatalf("a file's mount point must be a file: %v %v", st, err)
	}
	if err := unbindAll(sm, c, share); err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(share, "mounts/0"), filepath.Join(share, "rootfs")}
	if fmt.Sprint(sm.detached) != fmt.Sprint(want) {
		t.Errorf("detached %v, want newest first %v", sm.detached, want)
	}
	if _, err := os.Stat(share); !os.IsNotExist(err) {
		t.Errorf("share dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(src, "file")); err != nil {
		t.Errorf("the source must survive: %v", err)
	}

	// The VM is gone: nothing to detach, the dir still goes.
	c = &Container{}
	if err := bind(sm, c, src, filepath.Dir(share), filepath.Join(share, "rootfs"), true, vm.Writable); err != nil {
		t.Fatal(err)
	}
	if err := unbindAll(nil, c, share); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(share); !os.IsNotExist(err) {
		t.Errorf("share dir left: %v", err)
	}

	// A failed attach records nothing to undo.
	c = &Container{}
	if err := bind(&fakeMounter{failAttach: errors.New("no")}, c, src, filepath.Dir(share), filepath.Join(share, "rootfs"), true, vm.Writable); err == nil || len(c.Binds) != 0 {
		t.Errorf("failed attach: err %v, binds %v", err, c.Binds)
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
