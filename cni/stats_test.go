package cni

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestReadInterfaceStats reads the counters of a veth named like the pod's
// CNI interface in a netns of its own, after sending through it; a netns
// without that interface is an error, not zeros.
func TestReadInterfaceStats(t *testing.T) {
	requireRoot(t)
	ns, err := NewNetns(filepath.Join(t.TempDir(), "netns"), "stats-pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemoveNetns(ns.Path()) })
	if _, err := ReadInterfaceStats(ns.Path()); err == nil {
		t.Fatal("a netns without eth0 gave counters")
	}

	h := inNetns(t, ns.Path())
	// eth0 and its peer both inside the pod's netns; traffic from the peer
	// is what eth0 receives.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: IfName}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{IfName, "peer0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	peer, _ := h.LinkByName("peer0")
	send := func() {
		// A raw frame on the peer: no addresses or routes needed.
		fd, err := rawSocket(ns.Path(), peer.Attrs().Index)
		if err != nil {
			t.Fatal(err)
		}
		defer fd.Close()
		frame := make([]byte, 100)
		copy(frame, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		frame[12], frame[13] = 0x88, 0xb5 // a local experimental ethertype
		if _, err := fd.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	send()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := ReadInterfaceStats(ns.Path())
		if err != nil {
			t.Fatal(err)
		}
		if st.Name != IfName {
			t.Fatalf("interface %q", st.Name)
		}
		if st.RxBytes >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("eth0 received %d bytes after a 100-byte frame", st.RxBytes)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inNetns is a netlink handle in the netns at path.
func inNetns(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// rawSocket is an AF_PACKET socket made in the netns at path and bound to
// the interface ifindex there. It is made on a thread of its own that is
// never unlocked, so the goroutine's thread ends with it instead of going
// back to the scheduler in the wrong namespace.
func rawSocket(path string, ifindex int) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		target, err := netns.GetFromPath(path)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{err: err}
			return
		}
		proto := 0x88b5
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(uint16(proto))))
		if err != nil {
			ch <- result{err: err}
			return
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(uint16(proto)), Ifindex: ifindex}); err != nil {
			unix.Close(fd)
			ch <- result{err: err}
			return
		}
		ch <- result{f: os.NewFile(uintptr(fd), "raw")}
	}()
	r := <-ch
	return r.f, r.err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
