package cni

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces, bind mounts, veth, tc)")
	}
}

// nsInode identifies the network namespace a /proc ns link points at.
func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestNetnsLifecycle(t *testing.T) {
	requireRoot(t)
	root := filepath.Join(t.TempDir(), "netns") // NewNetns creates it
	host := nsInode(t, "/proc/thread-self/ns/net")

	ns, err := NewNetns(root, "pod-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Remove() })
	if ns.Path() != filepath.Join(root, "pod-a") {
		t.Fatalf("path %s", ns.Path())
	}
	if ok, err := isNetns(ns.Path()); !ok || err != nil {
		t.Fatalf("not a mounted netns: %v", err)
	}
	if nsInode(t, ns.Path()) == host {
		t.Fatal("the new namespace is the host's")
	}

	// Do runs inside it (only lo there) and leaves the caller's thread alone.
	var inside uint64
	var links []string
	err = ns.Do(func() error {
		inside = nsInode(t, "/proc/thread-self/ns/net")
		ls, err := netlink.LinkList()
		for _, l := range ls {
			links = append(links, l.Attrs().Name)
		}
		return err
	})
	if err != nil || inside != nsInode(t, ns.Path()) || len(links) != 1 || links[0] != "lo" {
		t.Fatalf("Do: err %v, inode %d, links %v", err, inside, links)
	}
	if nsInode(t, "/proc/thread-self/ns/net") != host {
		t.Fatal("the caller's thread changed namespace")
	}
	if want := errors.New("from f"); !errors.Is(ns.Do(func() error { return want }), want) {
		t.Fatal("Do lost f's error")
	}
	// Every thread goes back to the host namespace, the main thread too: a
	// locked goroutine ending on it would wedge it in the pod's namespace.
	for range 50 {
		_ = ns.Do(func() error { return nil })
	}
	if nsInode(t, "/proc/self/ns/net") != host {
		t.Fatal("the main thread is left in another namespace")
	}

	if _, err := NewNetns(root, "pod-a"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second NewNetns: %v", err)
	}
	for _, id := range []string{"", ".", "..", "a/b"} {
		if _, err := NewNetns(root, id); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("NewNetns(%q): %v", id, err)
		}
	}
	if opened, err := OpenNetns(ns.Path()); err != nil || opened.Path() != ns.Path() {
		t.Fatalf("OpenNetns: %v", err)
	}
	if _, err := OpenNetns(filepath.Join(root, "missing")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("OpenNetns(missing): %v", err)
	}
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenNetns(plain); err == nil {
		t.Fatal("OpenNetns of a plain file succeeded")
	}

	// Remove twice, then from the path alone as a restarted cocoond does.
	for range 2 {
		if err := ns.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(ns.Path()); !os.IsNotExist(err) {
		t.Fatalf("netns file left: %v", err)
	}
	b, err := NewNetns(root, "pod-b")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := RemoveNetns(b.Path()); err != nil {
			t.Fatal(err)
		}
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Fatalf("left in %s: %v", root, entries)
	}
}
