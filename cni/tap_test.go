package cni

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tcState is what SetupTap may have left in a netns.
type tcState struct {
	tap      netlink.Link   // nil when gone
	ingress  map[string]int // link name → ingress qdiscs
	redirect map[string]int // link name → ifindex our filter redirects to
}

func inspectTC(t *testing.T, ns *Netns) tcState {
	t.Helper()
	st := tcState{ingress: map[string]int{}, redirect: map[string]int{}}
	err := ns.Do(func() error {
		st.tap, _ = netlink.LinkByName(TapName)
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			qs, _ := netlink.QdiscList(l)
			for _, q := range qs {
				if _, ok := q.(*netlink.Ingress); ok {
					st.ingress[l.Attrs().Name]++
				}
			}
			fs, _ := netlink.FilterList(l, ingressParent)
			for _, f := range fs {
				if u, ok := f.(*netlink.U32); ok && u.Priority == tapFilterPrio {
					for _, a := range u.Actions {
						if m, ok := a.(*netlink.MirredAction); ok {
							st.redirect[l.Attrs().Name] = m.Ifindex
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestTapRedirect(t *testing.T) {
	n := newRealNet(t, portmapAndLoopback)
	ctx := context.Background()
	pod, ns := testPod(n, t, "pod-t")
	m := n.manager()
	res, err := m.Setup(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	tap, err := SetupTap(ns.Path(), res.Interface)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tap + tc setup took %v", time.Since(start))
	defer tap.File.Close()
	if tap.Name != TapName || tap.MAC.String() != res.MAC.String() || tap.MTU != res.MTU {
		t.Fatalf("tap %s %s %d, veth %s %d", tap.Name, tap.MAC, tap.MTU, res.MAC, res.MTU)
	}
	st := inspectTC(t, ns)
	if st.tap == nil || st.tap.Attrs().MTU != res.MTU || st.tap.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("tap link %+v", st.tap)
	}
	var veth netlink.Link
	_ = ns.Do(func() (err error) { veth, err = netlink.LinkByName("eth0"); return err })
	if st.ingress["eth0"] != 1 || st.ingress[TapName] != 1 ||
		st.redirect["eth0"] != st.tap.Attrs().Index || st.redirect[TapName] != veth.Attrs().Index {
		t.Fatalf("qdiscs %v, redirects %v (tap %d, veth %d)", st.ingress, st.redirect, st.tap.Attrs().Index, veth.Attrs().Index)
	}

	// What the guest would do first: ARP for the gateway through the tap.
	// The bridge's answer must come back through the veth into the tap.
	arpRoundTrip(t, tap, res.IPs[0].Addr(), res.Gateways[0])

	if _, err := SetupTap(ns.Path(), res.Interface); err == nil {
		t.Fatal("a second tap in the same netns was created")
	}
	if st := inspectTC(t, ns); len(st.redirect) != 2 {
		t.Fatalf("a failed second SetupTap broke the first: %v", st.redirect)
	}

	for range 2 {
		if err := TeardownTap(ns.Path()); err != nil {
			t.Fatal(err)
		}
	}
	if st := inspectTC(t, ns); st.tap != nil || len(st.ingress) > 0 || len(st.redirect) > 0 {
		t.Fatalf("left after TeardownTap: tap %v, qdiscs %v, filters %v", st.tap, st.ingress, st.redirect)
	}
	tap.File.Close()

	// The VMM exiting closes the last fd: the tap goes by itself, the
	// veth's filter stays until TeardownTap.
	tap2, err := SetupTap(ns.Path(), res.Interface)
	if err != nil {
		t.Fatal(err)
	}
	tap2.File.Close()
	// (The kernel clears the redirect's ifindex when its device goes.)
	if st := inspectTC(t, ns); st.tap != nil || len(st.redirect) != 1 || st.ingress["eth0"] != 1 {
		t.Fatalf("after closing the tap: tap %v, filters %v", st.tap, st.redirect)
	}
	if err := TeardownTap(ns.Path()); err != nil {
		t.Fatal(err)
	}
	if st := inspectTC(t, ns); len(st.ingress) > 0 || len(st.redirect) > 0 {
		t.Fatalf("left: qdiscs %v, filters %v", st.ingress, st.redirect)
	}

	if err := m.Teardown(ctx, pod.ID); err != nil {
		t.Fatal(err)
	}
	if err := ns.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := TeardownTap(ns.Path()); err != nil {
		t.Fatalf("TeardownTap with the netns gone: %v", err)
	}
	n.assertNothingLeft(t, pod.ID)
}

// arpRoundTrip writes an ARP request from ip for gw into the tap (as the
// guest would, with the veth's MAC) and waits for the reply on the tap.
func arpRoundTrip(t *testing.T, tap *Tap, ip, gw netip.Addr) {
	t.Helper()
	var frame bytes.Buffer
	frame.Write(make([]byte, 10)) // virtio_net_hdr: IFF_VNET_HDR
	frame.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	frame.Write(tap.MAC)
	_ = binary.Write(&frame, binary.BigEndian, []uint16{0x0806, 1, 0x0800})
	frame.Write([]byte{6, 4, 0, 1})
	frame.Write(tap.MAC)
	frame.Write(ip.AsSlice())
	frame.Write(make([]byte, 6))
	frame.Write(gw.AsSlice())
	fd := int(tap.File.Fd())
	if _, err := unix.Write(fd, frame.Bytes()); err != nil {
		t.Fatalf("write ARP request: %v", err)
	}
	buf := make([]byte, 65536)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 200); err != nil || n == 0 {
			continue
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatalf("read tap: %v", err)
		}
		f := buf[10:n]
		// ARP reply (op 2) whose sender is the gateway, to our MAC.
		if len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 &&
			bytes.Equal(f[28:32], gw.AsSlice()) && bytes.Equal(f[0:6], tap.MAC) {
			return
		}
	}
	t.Fatal("no ARP reply from the gateway came back through the redirect")
}
