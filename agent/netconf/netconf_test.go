package netconf

import (
	"errors"
	"net"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

const (
	guestMAC = "02:00:00:00:00:01" // the end the tests configure
	peerMAC  = "02:00:00:00:00:02"
	peerName = "veth-h"
)

// inNetns locks the calling goroutine's thread into a new, empty network
// namespace until the test ends. Each subtest runs on its own goroutine, so
// each must call it: a t.Run body would otherwise run in the host's netns.
func inNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	// Cleanup runs on this goroutine, still on the locked thread. Closing
	// the only handle once no thread is inside frees the namespace.
	t.Cleanup(func() {
		defer orig.Close()
		defer ns.Close()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: Go then ends it with the goroutine
			// instead of reusing a thread stuck in the test namespace.
			t.Errorf("restore netns: %v", err)
			return
		}
		runtime.UnlockOSThread()
	})
	if cur, err := netns.Get(); err != nil || cur.Equal(orig) {
		t.Fatalf("not in a new netns (err %v); refusing to touch the host", err)
	} else {
		cur.Close()
	}
}

// newVeth creates a veth pair in the test's namespace: "veth-g" with
// guestMAC, left down like a NIC the guest kernel just probed, and its peer
// veth-h, up so that veth-g gets a carrier once it is up.
func newVeth(t *testing.T) {
	t.Helper()
	guest, _ := net.ParseMAC(guestMAC)
	peer, _ := net.ParseMAC(peerMAC)
	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: "veth-g", HardwareAddr: guest},
		PeerName:         peerName,
		PeerHardwareAddr: peer,
	}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	p, err := netlink.LinkByName(peerName)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(p); err != nil {
		t.Fatal(err)
	}
}

// addrs returns an interface's addresses sorted, to compare as sets.
func addrs(i *agentapi.Interface) []string {
	var out []string
	for _, a := range i.GetAddresses() {
		out = append(out, a.GetAddress())
	}
	slices.Sort(out)
	return out
}

func TestUpdateInterface(t *testing.T) {
	tests := []struct {
		name  string
		steps []*agentapi.Interface // applied in order; the last is checked
		want  *agentapi.Interface   // nil when the last step must fail
		err   error
	}{{
		name: "rename, mtu and two addresses, MAC in upper case",
		steps: []*agentapi.Interface{{HwAddr: strings.ToUpper(guestMAC), Name: "eth0", Mtu: 1400,
			Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/16"}, {Address: "fd00::5/64"}}}},
		want: &agentapi.Interface{HwAddr: guestMAC, Name: "eth0", Mtu: 1400,
			Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/16"}, {Address: "fd00::5/64"}}},
	}, {
		name: "second call replaces the address set",
		steps: []*agentapi.Interface{
			{HwAddr: guestMAC, Name: "eth0", Addresses: []*agentapi.IPAddress{
				{Address: "10.88.0.5/16"}, {Address: "10.88.0.6/16"}, {Address: "fd00::5/64"}}},
			// Dropping the primary .5 takes secondary .6 with it in the
			// kernel; .6 must still be there afterwards.
			{HwAddr: guestMAC, Name: "eth0", Addresses: []*agentapi.IPAddress{
				{Address: "10.88.0.6/16"}, {Address: "10.88.0.7/16"}, {Address: "fd00::7/64"}}},
		},
		want: &agentapi.Interface{HwAddr: guestMAC, Name: "eth0", Mtu: 1500, Addresses: []*agentapi.IPAddress{
			{Address: "10.88.0.6/16"}, {Address: "10.88.0.7/16"}, {Address: "fd00::7/64"}}},
	}, {
		name: "same request twice is a no-op",
		steps: []*agentapi.Interface{
			{HwAddr: guestMAC, Name: "eth0", Mtu: 1400, Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/32"}}},
			{HwAddr: guestMAC, Name: "eth0", Mtu: 1400, Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/32"}}},
		},
		want: &agentapi.Interface{HwAddr: guestMAC, Name: "eth0", Mtu: 1400,
			Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/32"}}},
	}, {
		name:  "no name keeps the kernel's, no addresses removes all",
		steps: []*agentapi.Interface{{HwAddr: guestMAC, Addresses: []*agentapi.IPAddress{{Address: "10.1.0.1/8"}}}, {HwAddr: guestMAC}},
		want:  &agentapi.Interface{HwAddr: guestMAC, Name: "veth-g", Mtu: 1500},
	}, {
		name:  "name held by a down link is taken over",
		steps: []*agentapi.Interface{{HwAddr: guestMAC, Name: peerName}},
		want:  &agentapi.Interface{HwAddr: guestMAC, Name: peerName, Mtu: 1500},
	}, {
		name: "the link takes a new MAC (a warm pool VM claimed by a pod)",
		steps: []*agentapi.Interface{{HwAddr: guestMAC, SetHwAddr: "02:00:00:00:00:42", Name: "eth0",
			Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/16"}}}},
		want: &agentapi.Interface{HwAddr: "02:00:00:00:00:42", Name: "eth0", Mtu: 1500,
			Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/16"}}},
	}, {
		name:  "multicast new MAC changes nothing",
		steps: []*agentapi.Interface{{HwAddr: guestMAC, SetHwAddr: "01:00:5e:00:00:01", Name: "eth0"}},
		err:   errdefs.ErrInvalidArgument,
	}, {
		name:  "unknown MAC",
		steps: []*agentapi.Interface{{HwAddr: "02:00:00:00:00:99", Name: "eth0"}},
		err:   ErrNoSuchInterface,
	}, {
		name:  "bad MAC",
		steps: []*agentapi.Interface{{HwAddr: "not-a-mac", Name: "eth0"}},
		err:   errdefs.ErrInvalidArgument,
	}, {
		name: "bad address changes nothing",
		steps: []*agentapi.Interface{{HwAddr: guestMAC, Name: "eth0",
			Addresses: []*agentapi.IPAddress{{Address: "10.88.0.5/16"}, {Address: "10.88.0.300/16"}}}},
		err: errdefs.ErrInvalidArgument,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t)
			newVeth(t)
			if tt.name == "name held by a down link is taken over" {
				// Let the peer look like a NIC not yet configured.
				p, _ := netlink.LinkByName(peerName)
				if err := netlink.LinkSetDown(p); err != nil {
					t.Fatal(err)
				}
			}
			var got *agentapi.Interface
			var err error
			for i, step := range tt.steps {
				if got, err = UpdateInterface(step); err != nil && i < len(tt.steps)-1 {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				t.Log(err)
				if l, _ := netlink.LinkByName("veth-g"); l == nil || l.Attrs().Flags&net.FlagUp != 0 {
					t.Errorf("a failed request changed the link: %+v", l)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.HwAddr != tt.want.HwAddr || got.Name != tt.want.Name || got.Mtu != tt.want.Mtu ||
				!reflect.DeepEqual(addrs(got), addrs(tt.want)) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			l, err := netlink.LinkByName(tt.want.Name)
			if err != nil || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().MTU != int(tt.want.Mtu) {
				t.Errorf("kernel has %+v (err %v), want %s up with mtu %d", l, err, tt.want.Name, tt.want.Mtu)
			}
		})
	}
}

func TestUpdateInterfaceErrorNamesMAC(t *testing.T) {
	inNetns(t)
	_, err := UpdateInterface(&agentapi.Interface{HwAddr: "02:00:00:00:00:99"})
	if err == nil || !strings.Contains(err.Error(), "02:00:00:00:00:99") {
		t.Fatalf("err = %v, want one naming the MAC", err)
	}
}

// TestUpdateInterfaceKeepsLinkLocal checks that replacing addresses leaves
// the kernel's fe80:: address alone (and out of the reply).
func TestUpdateInterfaceKeepsLinkLocal(t *testing.T) {
	inNetns(t)
	newVeth(t)
	req := &agentapi.Interface{HwAddr: guestMAC, Name: "eth0", Addresses: []*agentapi.IPAddress{{Address: "fd00::5/64"}}}
	if _, err := UpdateInterface(req); err != nil {
		t.Fatal(err)
	}
	link, _ := netlink.LinkByName("eth0")
	linkLocal := func() bool {
		as, _ := netlink.AddrList(link, netlink.FAMILY_V6)
		return slices.ContainsFunc(as, func(a netlink.Addr) bool { return a.IP.IsLinkLocalUnicast() })
	}
	for deadline := time.Now().Add(5 * time.Second); !linkLocal(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("kernel gave eth0 no link-local address")
		}
	}
	req.Addresses = []*agentapi.IPAddress{{Address: "fd00::6/64"}}
	got, err := UpdateInterface(req)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(addrs(got), []string{"fd00::6/64"}) {
		t.Errorf("addresses = %v, want [fd00::6/64]", addrs(got))
	}
	if !linkLocal() {
		t.Error("link-local address was deleted")
	}
}

func TestBringUpLoopback(t *testing.T) {
	inNetns(t)
	if err := BringUpLoopback(); err != nil {
		t.Fatal(err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("lo = %+v (err %v), want up", lo, err)
	}
}
