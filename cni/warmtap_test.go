package cni

import (
	"context"
	"net"
	"testing"
)

// TestWarmTapConnect: a warm VM's tap is made in a netns before CNI ADD
// runs there, and is connected to the veth afterwards; frames then flow
// as through SetupTap's tap, and teardown leaves nothing.
func TestWarmTapConnect(t *testing.T) {
	n := newRealNet(t, portmapAndLoopback)
	ctx := context.Background()
	pod, ns := testPod(n, t, "pod-warm")
	f, err := CreateTap(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := ConnectTap(ns.Path(), "eth0"); err == nil {
		t.Fatal("ConnectTap succeeded with no veth yet")
	}
	if st := inspectTC(t, ns); st.tap == nil || len(st.ingress) > 0 || len(st.redirect) > 0 {
		t.Fatalf("after a failed ConnectTap: tap %v, qdiscs %v, filters %v", st.tap, st.ingress, st.redirect)
	}
	m := n.manager()
	res, err := m.Setup(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	tap, err := ConnectTap(ns.Path(), res.Interface)
	if err != nil {
		t.Fatal(err)
	}
	if tap.File != nil || tap.MAC.String() != res.MAC.String() || tap.MTU != res.MTU {
		t.Fatalf("tap %+v, veth %s %d", tap, res.MAC, res.MTU)
	}
	st := inspectTC(t, ns)
	if st.tap == nil || st.tap.Attrs().Flags&net.FlagUp == 0 || len(st.redirect) != 2 {
		t.Fatalf("tap %+v, filters %v", st.tap, st.redirect)
	}
	tap.File = f
	arpRoundTrip(t, tap, res.IPs[0].Addr(), res.Gateways[0])

	if err := TeardownTap(ns.Path()); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown(ctx, pod.ID); err != nil {
		t.Fatal(err)
	}
	if err := ns.Remove(); err != nil {
		t.Fatal(err)
	}
	n.assertNothingLeft(t, pod.ID)
}
