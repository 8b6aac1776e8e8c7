package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/api/guestmodules"
)

// fakeKernel records which module files were handed to finit_module and
// fails those named in errs.
type fakeKernel struct {
	loaded []string
	errs   map[string]error
}

func (k *fakeKernel) finit(f *os.File) error {
	name := guestmodules.Name(f.Name())
	k.loaded = append(k.loaded, name)
	return k.errs[name]
}

func TestLoad(t *testing.T) {
	const release = "6.1.0-test"
	tests := []struct {
		name     string
		list     string // "" means no list file at all
		errs     map[string]error
		wantLoad []string
		wantErr  string
	}{
		{
			name:     "loads in file order",
			list:     "# deps first\nkernel/virtio_ring.ko\n\nkernel/virtio.ko\nkernel/virtio-rng.ko\n",
			wantLoad: []string{"virtio_ring", "virtio", "virtio_rng"},
		},
		{
			name:     "already loaded is fine",
			list:     "kernel/virtio_ring.ko\nkernel/virtio.ko\n",
			errs:     map[string]error{"virtio_ring": unix.EEXIST},
			wantLoad: []string{"virtio_ring", "virtio"},
		},
		{
			name:     "failure names the module and stops",
			list:     "kernel/virtio_ring.ko\nkernel/virtio.ko\nkernel/virtio-rng.ko\n",
			errs:     map[string]error{"virtio": unix.ENOEXEC},
			wantLoad: []string{"virtio_ring", "virtio"},
			wantErr:  "load module virtio (kernel/virtio.ko): exec format error",
		},
		{
			name:    "missing file names the module",
			list:    "kernel/virtio_ring.ko\nkernel/gone.ko\n",
			wantErr: "load module gone",
		},
		{
			name:    "no list names the release",
			wantErr: "no module list for kernel 6.1.0-test",
		},
		{
			name:    "escaping path refused",
			list:    "../../etc/shadow\n",
			wantErr: "not relative",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "lib", "modules", release)
			if err := os.MkdirAll(filepath.Join(dir, "kernel"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, m := range []string{"virtio_ring.ko", "virtio.ko", "virtio-rng.ko"} {
				if err := os.WriteFile(filepath.Join(dir, "kernel", m), []byte("ko"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tt.list != "" {
				if err := os.WriteFile(guestmodules.ListPath(root, release), []byte(tt.list), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			k := &fakeKernel{errs: tt.errs}
			_, err := load(root, release, k.finit)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("load: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("load error = %v, want it to contain %q", err, tt.wantErr)
			}
			if tt.wantLoad != nil && !reflect.DeepEqual(k.loaded, tt.wantLoad) {
				t.Fatalf("loaded %v, want %v", k.loaded, tt.wantLoad)
			}
		})
	}
}

func TestReleaseNotEmpty(t *testing.T) {
	r, err := Release()
	if err != nil || r == "" {
		t.Fatalf("Release() = %q, %v", r, err)
	}
	if _, err := Modules(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Modules on empty root: %v, want not-exist", err)
	}
}
