package sandbox

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/cni"
)

func TestAgentNetwork(t *testing.T) {
	t.Parallel()
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	g := cni.GuestNetwork{Name: "eth0", MAC: mac, MTU: 1500, Addresses: []netip.Prefix{pfx("10.5.5.5/32"), pfx("fd00::5/64")},
		Routes: []cni.Route{
			{Dst: pfx("169.254.1.1/32")},
			{Dst: pfx("0.0.0.0/0"), GW: addr("169.254.1.1")},
			{Dst: pfx("10.6.0.0/16"), GW: addr("169.254.1.1")},
			{Dst: pfx("::/0"), GW: addr("fd00::1")},
		}}
	iface, routes := AgentNetwork(g)
	if got, want := ifaceString(iface), "02:00:00:00:00:05 eth0 mtu 1500 10.5.5.5/32 fd00::5/64"; got != want {
		t.Fatalf("interface %s, want %s", got, want)
	}
	want := []string{
		"169.254.1.1/32 dev eth0 scope 253",
		"default via 169.254.1.1 dev eth0",
		"10.6.0.0/16 via 169.254.1.1 dev eth0",
		"default via fd00::1 dev eth0",
	}
	var got []string
	for _, r := range routes.Routes {
		got = append(got, routeString(r))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("routes\n got %q\nwant %q", got, want)
	}
}

func ifaceString(i *agentapi.Interface) string {
	s := fmt.Sprintf("%s %s mtu %d", i.HwAddr, i.Name, i.Mtu)
	for _, a := range i.Addresses {
		s += " " + a.Address
	}
	return s
}

func routeString(r *agentapi.Route) string {
	s := r.Destination
	if r.Gateway != "" {
		s += " via " + r.Gateway
	}
	s += " dev " + r.Device
	if r.Scope != 0 {
		s += fmt.Sprintf(" scope %d", r.Scope)
	}
	return s
}
