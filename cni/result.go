package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// GuestNIC is the name the pod's NIC gets in the guest, as it has in a
// container's netns.
const GuestNIC = "eth0"

// Result is what the pod's network looks like after CNI ADD.
type Result struct {
	// Interface is the veth's name in the pod netns (the CNI ifName).
	Interface string `json:"interface"`
	// MAC and MTU are read from that link; the guest NIC takes both.
	MAC net.HardwareAddr `json:"mac"`
	MTU int              `json:"mtu"`
	// IPs are the pod's addresses with their subnet's prefix length.
	IPs []netip.Prefix `json:"ips"`
	// Gateways are the IPAM gateways, at most one per family, in IPs' order.
	Gateways []netip.Addr `json:"gateways,omitempty"`
	Routes   []Route      `json:"routes,omitempty"`
	DNS      types.DNS    `json:"dns"`
}

// Route is a route of the pod. GW is unset for a route on the link.
type Route struct {
	Dst netip.Prefix `json:"dst"`
	GW  netip.Addr   `json:"gw,omitzero"`
}

// newResult reads a plugin chain's result for the interface ifName.
func newResult(raw types.Result, ifName string) (*Result, error) {
	if raw == nil {
		return nil, errors.New("CNI ADD returned no result")
	}
	r, err := current.NewResultFromResult(raw)
	if err != nil {
		return nil, fmt.Errorf("CNI result: %w", err)
	}
	// IPs may name the interface they belong to; only those of the pod's
	// interface count (the bridge plugin also lists the host-side ones).
	want := -1
	for i, ifc := range r.Interfaces {
		if ifc.Sandbox != "" && ifc.Name == ifName {
			want = i
		}
	}
	res := &Result{Interface: ifName, DNS: r.DNS}
	gw := map[bool]netip.Addr{} // by "is IPv6"
	for _, ipc := range r.IPs {
		if ipc.Interface != nil && want >= 0 && *ipc.Interface != want {
			continue
		}
		p, ok := prefixOf(ipc.Address)
		if !ok {
			return nil, fmt.Errorf("CNI result: bad address %v", ipc.Address)
		}
		res.IPs = append(res.IPs, p)
		if g, ok := addrOf(ipc.Gateway); ok && !gw[g.Is6()].IsValid() {
			gw[g.Is6()] = g
			res.Gateways = append(res.Gateways, g)
		}
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("CNI result has no address for %s", ifName)
	}
	for _, rt := range r.Routes {
		dst, ok := prefixOf(rt.Dst)
		if !ok {
			return nil, fmt.Errorf("CNI result: bad route destination %v", rt.Dst)
		}
		g, ok := addrOf(rt.GW)
		if !ok {
			// The spec: a route without gw goes through the default
			// gateway, which is what the IPAM plugins configured in the
			// netns (ipam.ConfigureIface); with none it is on the link.
			g = gw[dst.Addr().Is6()]
		}
		res.Routes = append(res.Routes, Route{Dst: dst, GW: g})
	}
	return res, nil
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := addrOf(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	// An IPv4 address may come with a 16-byte mask (IPv4-mapped form).
	ones, bits := n.Mask.Size()
	switch {
	case a.Is4() && bits == 128 && ones >= 96:
		ones -= 96
	case a.Is4() && bits == 32, a.Is6() && bits == 128:
	default:
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok && a.IsValid()
}

// GuestNetwork is what the guest NIC must look like to be the pod's
// interface: the veth's MAC, MTU and addresses, and the pod's routes in the
// order the guest adds them. It is cni's own description; sandbox/ turns it
// into the agent's wire types.
type GuestNetwork struct {
	Name      string // GuestNIC
	MAC       net.HardwareAddr
	MTU       int
	Addresses []netip.Prefix
	Routes    []Route // on GuestNIC; a route without GW is on the link
}

// Guest describes the pod's NIC for the guest. No neighbours are needed: ARP
// goes through the tc redirect to the real gateway, which answers for itself.
func (r *Result) Guest() GuestNetwork {
	g := GuestNetwork{Name: GuestNIC, MAC: r.MAC, MTU: max(r.MTU, 0), Addresses: append([]netip.Prefix(nil), r.IPs...)}

	// Routes on the link come first: the kernel only accepts a gateway it
	// can already reach without one. A gateway outside every subnet of the
	// pod's addresses (a /32 pod IP, ptp's 169.254.1.1 style) gets a link
	// route of its own, as the plugin added in the netns.
	var link, via []Route
	seen := map[Route]bool{}
	add := func(list *[]Route, rt Route) {
		if !seen[rt] {
			seen[rt] = true
			*list = append(*list, rt)
		}
	}
	for _, rt := range r.Routes {
		if !rt.GW.IsValid() {
			add(&link, Route{Dst: rt.Dst})
			continue
		}
		if !r.onLink(rt.GW) {
			add(&link, Route{Dst: netip.PrefixFrom(rt.GW, rt.GW.BitLen())})
		}
		add(&via, rt)
	}
	g.Routes = append(link, via...)
	return g
}

// onLink reports whether gw is inside the subnet of one of the addresses,
// so the kernel's own subnet route already reaches it.
func (r *Result) onLink(gw netip.Addr) bool {
	for _, p := range r.IPs {
		if p.Masked().Contains(gw) {
			return true
		}
	}
	return false
}
