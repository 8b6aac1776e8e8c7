package vm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startTestVirtiofsd runs the real virtiofsd on share and connects to its
// socket the way QEMU would, which is what makes it enter its sandbox.
func startTestVirtiofsd(t *testing.T, share string) *State {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: virtiofsd's namespace sandbox")
	}
	if _, err := os.Stat(VirtiofsdPath); err != nil {
		t.Skipf("no virtiofsd at %s (Debian's qemu-system-x86)", VirtiofsdPath)
	}
	runDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, sock, err := StartVirtiofsd(ctx, runDir, Share{Tag: "t", Source: share}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Terminate(time.Second) })
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &State{ID: "test", Helpers: []Process{w.Process}}
}

// TestShareNamespace plays critest's read-only mount specs against the real
// virtiofsd: a volume holding a tmpfs, mounted read-only in the share, must
// keep the tmpfs writable (unless recursive), and the host must be able to
// unmount and delete the volume while the share still has it.
func TestShareNamespace(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		ro                   ReadOnly
		topWrites, subWrites bool
	}{
		{"writable", Writable, true, true},
		{"read-only top", ReadOnlyTop, false, true},
		{"read-only recursive", ReadOnlyRecursive, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			share := t.TempDir()
			st := startTestVirtiofsd(t, share)
			ns, err := FindShareNamespace(st, "t", share)
			if err != nil {
				t.Fatal(err)
			}

			src := t.TempDir()
			sub := filepath.Join(src, "tmpfs")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("none", sub, "tmpfs", 0, ""); err != nil {
				t.Fatal(err)
			}
			defer unix.Unmount(sub, unix.MNT_DETACH)
			dst := filepath.Join(share, "ctr", "mounts", "0")
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := ns.Attach(src, dst, tc.ro); err != nil {
				t.Fatal(err)
			}
			if nested, _ := hostMountsBelow(share); nested {
				t.Error("the share's mounts leaked into the host's namespace")
			}
			mounted, err := ns.Mounted(dst)
			if err != nil || len(mounted) != 2 {
				t.Errorf("mounted below %s in the share: %v (%v), want the volume and its tmpfs", dst, mounted, err)
			}

			// virtiofsd's view of the share, as the guest gets it.
			inShare := filepath.Join("/proc", strconv.Itoa(ns.pid), "root", "ctr", "mounts", "0")
			writes := func(dir string) bool {
				err := os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o644)
				if err != nil && !errors.Is(err, unix.EROFS) {
					t.Fatalf("write in %s: %v", dir, err)
				}
				return err == nil
			}
			if got := writes(inShare); got != tc.topWrites {
				t.Errorf("volume writable = %v, want %v", got, tc.topWrites)
			}
			if got := writes(filepath.Join(inShare, "tmpfs")); got != tc.subWrites {
				t.Errorf("tmpfs inside it writable = %v, want %v", got, tc.subWrites)
			}

			// What critest's cleanup does while the pod still runs.
			if err := unix.Unmount(sub, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(src); err != nil {
				t.Errorf("host cannot remove the volume while the share has it: %v", err)
			}

			if err := ns.Detach(dst); err != nil {
				t.Fatal(err)
			}
			if mounted, _ := ns.Mounted(dst); len(mounted) != 0 {
				t.Errorf("still mounted after Detach: %v", mounted)
			}
		})
	}
}

func TestShareNamespaceGone(t *testing.T) {
	share := t.TempDir()
	st := startTestVirtiofsd(t, share)
	ns, err := FindShareNamespace(st, "t", share)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FindShareNamespace(st, "other", share); !errors.Is(err, ErrShareGone) {
		t.Errorf("unknown tag: %v, want ErrShareGone", err)
	}
	if err := ns.Attach(t.TempDir(), "/etc", Writable); err == nil || !strings.Contains(err.Error(), "not below the share") {
		t.Errorf("a path outside the share: %v", err)
	}
	p := st.Helpers[0]
	if err := unix.Kill(p.Pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Alive() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := FindShareNamespace(st, "t", share); !errors.Is(err, ErrShareGone) {
		t.Errorf("after virtiofsd died: %v, want ErrShareGone", err)
	}
}

func hostMountsBelow(dir string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			return true, nil
		}
	}
	return false, nil
}

// TestShareNamespaceHostileGuest: the share's root is read-only to the
// guest once sealed (writable mounts attached to it stay writable), and a
// symlink the guest planted never redirects an attach or a detach.
func TestShareNamespaceHostileGuest(t *testing.T) {
	share := t.TempDir()
	st := startTestVirtiofsd(t, share)
	ns, err := FindShareNamespace(st, "t", share)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(share, "ctr", "rootfs")
	if err := MkdirAllBeneath(share, "ctr/rootfs", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ns.SealRoot(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Attach(t.TempDir(), rootfs, Writable); err != nil {
		t.Fatal(err)
	}
	inShare := filepath.Join("/proc", strconv.Itoa(ns.pid), "root")
	if err := os.WriteFile(filepath.Join(inShare, "ctr", "planted"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("guest write at the share's root: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(inShare, "ctr", "rootfs", "file"), nil, 0o644); err != nil {
		t.Errorf("guest write in a writable mount: %v", err)
	}

	// Planted on the host side (as a guest could have before the seal):
	// a symlink in place of a mount point, and one on the way to it.
	if err := os.Symlink("rootfs", filepath.Join(share, "ctr", "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("ctr", filepath.Join(share, "dirlink")); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{filepath.Join(share, "ctr", "link"), filepath.Join(share, "dirlink", "rootfs")} {
		if err := ns.Attach(t.TempDir(), dst, Writable); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("attach at %s: %v, want ErrUnsafePath", dst, err)
		}
		if err := ns.Detach(dst); !errors.Is(err, ErrUnsafePath) && err != nil {
			t.Errorf("detach at %s: %v", dst, err)
		}
	}
	if mounted, err := ns.Mounted(rootfs); err != nil || len(mounted) != 1 {
		t.Errorf("the rootfs mount after planted detaches: %v (%v), want it still there", mounted, err)
	}
	if err := ns.Detach(rootfs); err != nil {
		t.Fatal(err)
	}
	if mounted, _ := ns.Mounted(rootfs); len(mounted) != 0 {
		t.Errorf("still mounted after Detach: %v", mounted)
	}
}
