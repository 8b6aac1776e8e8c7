package cni

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types/create"
)

func TestNewResult(t *testing.T) {
	const bridge = `{"cniVersion":"1.0.0",
		"interfaces":[{"name":"cni0","mac":"aa:aa:aa:aa:aa:aa"},{"name":"veth1","mac":"bb:bb:bb:bb:bb:bb"},{"name":"eth0","mac":"02:00:00:00:00:05","sandbox":"/run/ns"}],
		"ips":[{"interface":2,"address":"10.199.0.5/24","gateway":"10.199.0.1"}],
		"routes":[{"dst":"0.0.0.0/0","gw":"10.199.0.1"}],
		"dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}`
	const dual = `{"cniVersion":"1.0.0",
		"interfaces":[{"name":"eth0","sandbox":"/run/ns"}],
		"ips":[{"interface":0,"address":"10.1.0.5/16","gateway":"10.1.0.1"},{"interface":0,"address":"fd00::5/64","gateway":"fd00::1"}],
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"},{"dst":"192.168.0.0/16","gw":"10.1.0.254"}]}`
	const otherIface = `{"cniVersion":"1.0.0",
		"interfaces":[{"name":"eth0","sandbox":"/run/ns"},{"name":"net1","sandbox":"/run/ns"}],
		"ips":[{"interface":1,"address":"10.2.0.5/24"},{"interface":0,"address":"10.1.0.5/24"}]}`
	const old = `{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.3.0.7/24","gateway":"10.3.0.1"}],"routes":[{"dst":"10.9.0.0/16"}]}`
	const noGateway = `{"cniVersion":"1.0.0","ips":[{"address":"10.4.0.7/24"}],"routes":[{"dst":"10.8.0.0/16"}]}`

	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name    string
		raw     string
		wantIPs []netip.Prefix
		wantGWs []netip.Addr
		routes  []Route
		dns     string
		wantErr string
	}{
		{name: "bridge result: the sandbox interface's IP only", raw: bridge,
			wantIPs: []netip.Prefix{pfx("10.199.0.5/24")}, wantGWs: []netip.Addr{addr("10.199.0.1")},
			routes: []Route{{Dst: pfx("0.0.0.0/0"), GW: addr("10.199.0.1")}}, dns: "10.96.0.10"},
		{name: "dual stack, routes without gw use the family's gateway", raw: dual,
			wantIPs: []netip.Prefix{pfx("10.1.0.5/16"), pfx("fd00::5/64")},
			wantGWs: []netip.Addr{addr("10.1.0.1"), addr("fd00::1")},
			routes: []Route{
				{Dst: pfx("0.0.0.0/0"), GW: addr("10.1.0.1")}, {Dst: pfx("::/0"), GW: addr("fd00::1")},
				{Dst: pfx("192.168.0.0/16"), GW: addr("10.1.0.254")},
			}},
		{name: "another interface's IPs are ignored", raw: otherIface, wantIPs: []netip.Prefix{pfx("10.1.0.5/24")}},
		{name: "0.4.0 result is converted", raw: old,
			wantIPs: []netip.Prefix{pfx("10.3.0.7/24")}, wantGWs: []netip.Addr{addr("10.3.0.1")},
			routes: []Route{{Dst: pfx("10.9.0.0/16"), GW: addr("10.3.0.1")}}},
		{name: "route without any gateway stays on the link", raw: noGateway,
			wantIPs: []netip.Prefix{pfx("10.4.0.7/24")}, routes: []Route{{Dst: pfx("10.8.0.0/16")}}},
		{name: "no address", raw: `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}]}`, wantErr: "no address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := create.CreateFromBytes([]byte(tt.raw))
			if err != nil {
				t.Fatal(err)
			}
			res, err := newResult(raw, "eth0")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equal(res.IPs, tt.wantIPs) || !equal(res.Gateways, tt.wantGWs) || !equal(res.Routes, tt.routes) {
				t.Fatalf("got ips %v gws %v routes %v", res.IPs, res.Gateways, res.Routes)
			}
			if tt.dns != "" && (len(res.DNS.Nameservers) != 1 || res.DNS.Nameservers[0] != tt.dns) {
				t.Fatalf("dns %+v", res.DNS)
			}
		})
	}
	if _, err := newResult(nil, "eth0"); err == nil {
		t.Fatal("nil result accepted")
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestGuestNetwork(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name   string
		res    Result
		iface  string
		routes []string
	}{
		{name: "gateway in the subnet: the kernel's subnet route reaches it",
			res:    Result{MAC: mac, MTU: 1450, IPs: []netip.Prefix{pfx("10.199.0.5/24")}, Routes: []Route{{Dst: pfx("0.0.0.0/0"), GW: addr("10.199.0.1")}}},
			iface:  "02:00:00:00:00:05 eth0 mtu 1450 10.199.0.5/24",
			routes: []string{"0.0.0.0/0 via 10.199.0.1"}},
		{name: "off-subnet gateway gets a link route first",
			res: Result{MAC: mac, MTU: 1500, IPs: []netip.Prefix{pfx("10.5.5.5/32")}, Routes: []Route{
				{Dst: pfx("0.0.0.0/0"), GW: addr("169.254.1.1")}, {Dst: pfx("10.6.0.0/16"), GW: addr("169.254.1.1")},
			}},
			iface: "02:00:00:00:00:05 eth0 mtu 1500 10.5.5.5/32",
			routes: []string{
				"169.254.1.1/32",
				"0.0.0.0/0 via 169.254.1.1",
				"10.6.0.0/16 via 169.254.1.1",
			}},
		{name: "link routes before gateway routes, dual stack",
			res: Result{MAC: mac, MTU: 1500, IPs: []netip.Prefix{pfx("10.1.0.5/16"), pfx("fd00::5/64")}, Routes: []Route{
				{Dst: pfx("::/0"), GW: addr("fd00::1")}, {Dst: pfx("10.9.0.0/16")},
			}},
			iface: "02:00:00:00:00:05 eth0 mtu 1500 10.1.0.5/16 fd00::5/64",
			routes: []string{
				"10.9.0.0/16",
				"::/0 via fd00::1",
			}},
		{name: "no routes", res: Result{MAC: mac, MTU: 9000, IPs: []netip.Prefix{pfx("10.1.0.5/16")}},
			iface: "02:00:00:00:00:05 eth0 mtu 9000 10.1.0.5/16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := tt.res.Guest()
			if got := ifaceString(g); got != tt.iface {
				t.Fatalf("interface\n got %s\nwant %s", got, tt.iface)
			}
			var got []string
			for _, r := range g.Routes {
				got = append(got, routeString(r))
			}
			if len(got) != len(tt.routes) {
				t.Fatalf("routes %q, want %q", got, tt.routes)
			}
			for i := range got {
				if got[i] != tt.routes[i] {
					t.Fatalf("route %d: %s, want %s", i, got[i], tt.routes[i])
				}
			}
		})
	}
}

func ifaceString(g GuestNetwork) string {
	s := fmt.Sprintf("%s %s mtu %d", g.MAC, g.Name, g.MTU)
	for _, a := range g.Addresses {
		s += " " + a.String()
	}
	return s
}

func routeString(r Route) string {
	s := r.Dst.String()
	if r.GW.IsValid() {
		s += " via " + r.GW.String()
	}
	return s
}
