package netconf

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

func routeStrs(rs *agentapi.Routes) []string {
	out := []string{}
	for _, r := range rs.GetRoutes() {
		out = append(out, fmt.Sprintf("%s via=%s dev=%s src=%s scope=%d",
			r.Destination, r.Gateway, r.Device, r.Source, r.Scope))
	}
	slices.Sort(out)
	return out
}

// setupGuest gives the test namespace eth0 (guestMAC) with addrs and a peer
// with its own address and static route, which UpdateRoutes must not touch.
func setupGuest(t *testing.T, addrs ...string) {
	t.Helper()
	newVeth(t)
	req := &agentapi.Interface{HwAddr: guestMAC, Name: "eth0"}
	for _, a := range addrs {
		req.Addresses = append(req.Addresses, &agentapi.IPAddress{Address: a})
	}
	if _, err := UpdateInterface(req); err != nil {
		t.Fatal(err)
	}
	peer, _ := netlink.LinkByName(peerName)
	a, _ := netlink.ParseAddr("10.99.0.1/24")
	if err := netlink.AddrAdd(peer, a); err != nil {
		t.Fatal(err)
	}
	_, dst, _ := net.ParseCIDR("10.100.0.0/16")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.99.0.2")}); err != nil {
		t.Fatal(err)
	}
}

var peerRoutes = []string{
	"10.100.0.0/16 via=10.99.0.2 dev=veth-h src= scope=0",
	"10.99.0.0/24 via= dev=veth-h src=10.99.0.1 scope=253",
}

func routes(rs ...*agentapi.Route) *agentapi.Routes { return &agentapi.Routes{Routes: rs} }

func TestUpdateRoutes(t *testing.T) {
	var (
		defaultGw = &agentapi.Route{Destination: "default", Gateway: "10.88.0.1", Device: "eth0"}
		subnet16  = "10.88.0.0/16 via= dev=eth0 src=10.88.0.5 scope=253"
		default4  = "default via=10.88.0.1 dev=eth0 src= scope=0"
	)
	tests := []struct {
		name    string
		addrs   []string
		steps   []*agentapi.Routes // applied in order; the last is checked
		want    []string
		err     error
		errText string
	}{{
		name:  "default route via a gateway in the subnet",
		addrs: []string{"10.88.0.5/16"},
		steps: []*agentapi.Routes{routes(defaultGw)},
		want:  []string{subnet16, default4},
	}, {
		name:  "gateway outside the subnet, link route listed after it",
		addrs: []string{"10.88.0.5/32"},
		steps: []*agentapi.Routes{routes(defaultGw,
			&agentapi.Route{Destination: "10.88.0.1/32", Device: "eth0", Scope: 253})},
		want: []string{"10.88.0.1/32 via= dev=eth0 src= scope=253", default4},
	}, {
		name:    "gateway outside the subnet without a link route",
		addrs:   []string{"10.88.0.5/32"},
		steps:   []*agentapi.Routes{routes(defaultGw)},
		errText: "route default via 10.88.0.1 dev eth0: ",
	}, {
		name:  "subnet route the kernel already has",
		addrs: []string{"10.88.0.5/16"},
		steps: []*agentapi.Routes{routes(&agentapi.Route{Destination: "10.88.0.0/16", Device: "eth0"}, defaultGw)},
		want:  []string{subnet16, default4},
	}, {
		name:  "second call replaces the first",
		addrs: []string{"10.88.0.5/16"},
		steps: []*agentapi.Routes{
			routes(&agentapi.Route{Destination: "10.1.0.0/16", Gateway: "10.88.0.1", Device: "eth0"}),
			routes(&agentapi.Route{Destination: "10.2.0.0/16", Gateway: "10.88.0.1", Device: "eth0", Source: "10.88.0.5"}),
		},
		want: []string{subnet16, "10.2.0.0/16 via=10.88.0.1 dev=eth0 src=10.88.0.5 scope=0"},
	}, {
		name:  "IPv6 default route from an empty destination",
		addrs: []string{"fd00::5/64"},
		steps: []*agentapi.Routes{routes(&agentapi.Route{Gateway: "fd00::1", Device: "eth0"})},
		want:  []string{"default via=fd00::1 dev=eth0 src= scope=0", "fd00::/64 via= dev=eth0 src= scope=0"},
	}, {
		name:  "IPv6 link-local gateway and device-only default",
		addrs: []string{"10.88.0.5/32"},
		steps: []*agentapi.Routes{routes(
			&agentapi.Route{Destination: "2001:db8::/32", Gateway: "fe80::1", Device: "eth0"},
			&agentapi.Route{Destination: "::/0", Device: "eth0"},
			&agentapi.Route{Destination: "default", Device: "eth0"})},
		want: []string{"2001:db8::/32 via=fe80::1 dev=eth0 src= scope=0", "::/0 via= dev=eth0 src= scope=0",
			"default via= dev=eth0 src= scope=253"},
	}, {
		name:    "unknown device",
		addrs:   []string{"10.88.0.5/16"},
		steps:   []*agentapi.Routes{routes(&agentapi.Route{Destination: "default", Gateway: "10.88.0.1", Device: "eth9"})},
		err:     ErrNoSuchInterface,
		errText: "route default via 10.88.0.1 dev eth9: ",
	}, {
		name:    "bad destination",
		addrs:   []string{"10.88.0.5/16"},
		steps:   []*agentapi.Routes{routes(&agentapi.Route{Destination: "10.0.0.0/33", Device: "eth0"})},
		err:     errdefs.ErrInvalidArgument,
		errText: "route 10.0.0.0/33 dev eth0: ",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t)
			setupGuest(t, tt.addrs...)
			var got *agentapi.Routes
			var err error
			for i, step := range tt.steps {
				if got, err = UpdateRoutes(step); err != nil && i < len(tt.steps)-1 {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			defer func() {
				// Whatever happened, the peer's routes are untouched.
				all, err := listRoutes(nil)
				if err != nil {
					t.Fatal(err)
				}
				var peer []string
				for _, r := range routeStrs(all) {
					if strings.Contains(r, "dev="+peerName) {
						peer = append(peer, r)
					}
				}
				if !reflect.DeepEqual(peer, peerRoutes) {
					t.Errorf("peer routes = %q, want %q", peer, peerRoutes)
				}
			}()
			if tt.err != nil || tt.errText != "" {
				if err == nil || (tt.err != nil && !errors.Is(err, tt.err)) || !strings.HasPrefix(err.Error(), tt.errText) {
					t.Fatalf("err = %v, want %v starting %q", err, tt.err, tt.errText)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Sorted(slices.Values(tt.want))
			if g := routeStrs(got); !reflect.DeepEqual(g, want) {
				t.Fatalf("routes = %q, want %q", g, want)
			}
			// Idempotent: the same request again, and the reply sent back
			// as a request, both leave the same routes.
			for _, req := range []*agentapi.Routes{tt.steps[len(tt.steps)-1], got} {
				again, err := UpdateRoutes(req)
				if err != nil {
					t.Fatalf("again with %v: %v", routeStrs(req), err)
				}
				if g := routeStrs(again); !reflect.DeepEqual(g, want) {
					t.Errorf("again: routes = %q, want %q", g, want)
				}
			}
		})
	}
}

func TestListRoutes(t *testing.T) {
	inNetns(t)
	setupGuest(t, "10.88.0.5/16", "fd00::5/64")
	if _, err := UpdateRoutes(routes(&agentapi.Route{Destination: "default", Gateway: "10.88.0.1", Device: "eth0"})); err != nil {
		t.Fatal(err)
	}
	// Routes on lo are left out.
	if err := BringUpLoopback(); err != nil {
		t.Fatal(err)
	}
	lo, _ := netlink.LinkByName("lo")
	_, dst, _ := net.ParseCIDR("10.200.0.0/16")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	got, err := listRoutes(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string{
		"10.88.0.0/16 via= dev=eth0 src=10.88.0.5 scope=253",
		"default via=10.88.0.1 dev=eth0 src= scope=0",
		"fd00::/64 via= dev=eth0 src= scope=0",
	}, peerRoutes...)
	slices.Sort(want)
	if g := routeStrs(got); !reflect.DeepEqual(g, want) {
		t.Errorf("listRoutes = %q, want %q", g, want)
	}
}

// TestParseRoute covers validation and defaults; it needs no privileges.
func TestParseRoute(t *testing.T) {
	tests := []struct {
		in    *agentapi.Route
		dst   string
		scope netlink.Scope
		err   string // prefix of the error; "" for none
	}{
		{in: &agentapi.Route{Gateway: "10.0.0.1", Device: "eth0"}, dst: "0.0.0.0/0", scope: netlink.SCOPE_UNIVERSE},
		{in: &agentapi.Route{Destination: "default", Gateway: "fd00::1", Device: "eth0"}, dst: "::/0", scope: netlink.SCOPE_UNIVERSE},
		{in: &agentapi.Route{Destination: "default", Device: "eth0"}, dst: "0.0.0.0/0", scope: netlink.SCOPE_LINK},
		{in: &agentapi.Route{Destination: "default", Source: "fd00::5", Device: "eth0"}, dst: "::/0", scope: netlink.SCOPE_UNIVERSE},
		{in: &agentapi.Route{Destination: "10.1.2.3/8", Device: "eth0"}, dst: "10.0.0.0/8", scope: netlink.SCOPE_LINK},
		{in: &agentapi.Route{Destination: "10.0.0.1", Device: "eth0", Scope: 254}, dst: "10.0.0.1/32", scope: netlink.SCOPE_HOST},
		{in: &agentapi.Route{Destination: "::ffff:10.0.0.1", Gateway: "10.88.0.1", Device: "eth0"}, dst: "10.0.0.1/32", scope: netlink.SCOPE_UNIVERSE},
		{in: &agentapi.Route{Destination: "fd00::/64", Device: "eth0", Scope: 253}, dst: "fd00::/64", scope: netlink.SCOPE_UNIVERSE},
		{in: &agentapi.Route{Destination: "default", Gateway: "10.0.0.1"}, err: "route default via 10.0.0.1 dev : invalid argument: no device"},
		{in: &agentapi.Route{Gateway: "10.0.0", Device: "eth0"}, err: "route default via 10.0.0 dev eth0: invalid argument: gateway"},
		{in: &agentapi.Route{Gateway: "fe80::1%eth0", Device: "eth0"}, err: "route default via fe80::1%eth0 dev eth0: invalid argument: gateway"},
		{in: &agentapi.Route{Destination: "10.0.0.0/8", Gateway: "fd00::1", Device: "eth0"}, err: "route 10.0.0.0/8 via fd00::1 dev eth0: invalid argument: gateway and"},
		{in: &agentapi.Route{Destination: "fd00::/8", Source: "10.0.0.1", Device: "eth0"}, err: "route fd00::/8 dev eth0 src 10.0.0.1: invalid argument: source and"},
		{in: &agentapi.Route{Destination: "10.0.0.0/8", Device: "eth0", Scope: 256}, err: "route 10.0.0.0/8 dev eth0: invalid argument: scope 256"},
		{in: &agentapi.Route{Destination: "10.0.0.0/33", Device: "eth0"}, err: "route 10.0.0.0/33 dev eth0: invalid argument"},
		{in: &agentapi.Route{Destination: "nonsense", Device: "eth0"}, err: "route nonsense dev eth0: invalid argument: destination"},
	}
	for _, tt := range tests {
		t.Run(describe(tt.in), func(t *testing.T) {
			s, err := parseRoute(tt.in)
			if tt.err != "" {
				if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one starting %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.dst.String() != tt.dst || s.scope != tt.scope {
				t.Errorf("got dst %s scope %d, want %s scope %d", s.dst, s.scope, tt.dst, tt.scope)
			}
		})
	}
}
