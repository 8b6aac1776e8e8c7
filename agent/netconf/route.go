package netconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// UpdateRoutes makes the main-table routes on the devices the request names
// exactly the requested ones and returns what the kernel then has on them.
//
// It first deletes every route on those devices except the ones the kernel
// made itself (proto kernel: the subnet routes of the links' addresses and
// IPv6 fe80::/64); a requested route equal to such a kernel route is left
// as it is. It then adds the requested routes, those without a gateway
// first, keeping the request's order otherwise: the kernel only accepts a
// gateway it can reach through an existing route without a gateway (e.g.
// 10.88.0.1/32 dev eth0 scope link before default via 10.88.0.1).
//
// Routes on devices the request does not name are never touched; a route
// whose destination is taken in the main table fails with EEXIST.
func UpdateRoutes(routes *agentapi.Routes) (*agentapi.Routes, error) {
	specs := make([]routeSpec, 0, len(routes.GetRoutes()))
	for _, r := range routes.GetRoutes() {
		s, err := parseRoute(r)
		if err != nil {
			return nil, err
		}
		specs = append(specs, s)
	}
	sort.SliceStable(specs, func(i, j int) bool {
		return !specs[i].gw.IsValid() && specs[j].gw.IsValid()
	})

	mu.Lock()
	defer mu.Unlock()

	index := map[string]int{}
	devices := map[int]bool{}
	for _, s := range specs {
		if _, ok := index[s.device]; ok {
			continue
		}
		l, err := linkByName(s.device)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.item, err)
		}
		index[s.device] = l.Attrs().Index
		devices[l.Attrs().Index] = true
	}

	kernel := map[int][]netlink.Route{}
	for name, idx := range index {
		rs, err := mainRoutes(idx)
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			if r.Protocol == unix.RTPROT_KERNEL {
				kernel[idx] = append(kernel[idx], r)
				continue
			}
			// ESRCH: it went with a route or address deleted before it.
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("delete %s: %w", describe(toRoute(r, name)), err)
			}
		}
	}

	for _, s := range specs {
		idx := index[s.device]
		if s.coveredBy(kernel[idx]) {
			continue
		}
		if err := netlink.RouteAdd(s.netlinkRoute(idx)); err != nil {
			return nil, fmt.Errorf("%s: %w", s.item, err)
		}
	}
	return listRoutes(devices)
}

// routeSpec is one validated route of a request.
type routeSpec struct {
	item    string // how errors name the route, as the request gave it
	device  string
	dst     netip.Prefix
	gw, src netip.Addr
	scope   netlink.Scope
}

// parseRoute validates r. The default route ("" or "default") is IPv6 when
// the gateway (or else the source) is, and IPv4 otherwise. An IPv4 route
// without a gateway and with scope 0 gets scope link, as `ip route` does:
// proto3 cannot tell "unset" from universe, which such a route never wants.
// IPv6 routes always get scope universe, the only one the kernel reports.
func parseRoute(r *agentapi.Route) (routeSpec, error) {
	s := routeSpec{item: describe(r), device: r.GetDevice()}
	if s.device == "" {
		return s, invalid(s.item, errors.New("no device"))
	}
	var err error
	if g := r.GetGateway(); g != "" {
		if s.gw, err = parseIP(g); err != nil {
			return s, invalid(s.item, fmt.Errorf("gateway: %w", err))
		}
	}
	if src := r.GetSource(); src != "" {
		if s.src, err = parseIP(src); err != nil {
			return s, invalid(s.item, fmt.Errorf("source: %w", err))
		}
	}
	switch d := r.GetDestination(); {
	case d == "" || d == "default":
		fam := s.gw
		if !fam.IsValid() {
			fam = s.src
		}
		s.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if fam.Is6() {
			s.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
	case strings.Contains(d, "/"):
		p, err := netip.ParsePrefix(d)
		if err != nil {
			return s, invalid(s.item, err)
		}
		// The kernel rejects host bits; drop them as the CIDR means the
		// network anyway.
		s.dst = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked()
		if !s.dst.IsValid() {
			return s, invalid(s.item, fmt.Errorf("destination %q: not a prefix", d))
		}
	default:
		a, err := parseIP(d)
		if err != nil {
			return s, invalid(s.item, fmt.Errorf("destination: %w", err))
		}
		s.dst = netip.PrefixFrom(a, a.BitLen())
	}
	v6 := s.dst.Addr().Is6()
	if s.gw.IsValid() && s.gw.Is6() != v6 {
		return s, invalid(s.item, errors.New("gateway and destination are of different families"))
	}
	if s.src.IsValid() && s.src.Is6() != v6 {
		return s, invalid(s.item, errors.New("source and destination are of different families"))
	}
	if r.GetScope() > 255 {
		return s, invalid(s.item, fmt.Errorf("scope %d out of range", r.GetScope()))
	}
	s.scope = netlink.Scope(r.GetScope())
	switch {
	case v6:
		s.scope = netlink.SCOPE_UNIVERSE
	case s.scope == netlink.SCOPE_UNIVERSE && !s.gw.IsValid():
		s.scope = netlink.SCOPE_LINK
	}
	return s, nil
}

// parseIP parses a plain address; IPv4-mapped IPv6 counts as IPv4.
func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, err
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: zones are not allowed, the device says where", s)
	}
	return a.Unmap(), nil
}

func (s routeSpec) netlinkRoute(linkIndex int) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       ipNet(s.dst),
		Scope:     s.scope,
		Table:     unix.RT_TABLE_MAIN,
	}
	if s.gw.IsValid() {
		r.Gw = s.gw.AsSlice()
	}
	if s.src.IsValid() {
		r.Src = s.src.AsSlice()
	}
	return r
}

// coveredBy reports whether one of the kernel's own routes on the device is
// already this route: a CNI result usually lists the subnet route that the
// kernel added along with the address, and adding it again fails.
func (s routeSpec) coveredBy(kernel []netlink.Route) bool {
	if s.gw.IsValid() {
		return false
	}
	for _, r := range kernel {
		dst, ok := addrPrefix(r.Dst)
		if !ok || dst != s.dst || r.Gw != nil {
			continue
		}
		if s.src.IsValid() && !net.IP(s.src.AsSlice()).Equal(r.Src) {
			continue
		}
		if s.dst.Addr().Is4() && r.Scope != s.scope {
			continue
		}
		return true
	}
	return false
}

// mainRoutes lists the main table, only routes out of linkIndex if non-zero.
func mainRoutes(linkIndex int) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: linkIndex}
	mask := netlink.RT_FILTER_TABLE
	if linkIndex != 0 {
		mask |= netlink.RT_FILTER_OIF
	}
	rs, err := dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, mask)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return rs, nil
}

// listable reports whether a route is one the host cares about: unicast,
// out of a device, and not the fe80::/64 the kernel adds to every link.
func listable(r netlink.Route) bool {
	p, ok := addrPrefix(r.Dst)
	if !ok || r.Type != unix.RTN_UNICAST || r.LinkIndex == 0 {
		return false
	}
	return !(isLinkLocal6(p.Addr()) && p.Bits() >= 10)
}

// toRoute converts a kernel route out of device to the wire form. The
// default route reads "default", except an IPv6 one without a gateway
// ("::/0"), which "default" would turn into IPv4 if sent back.
func toRoute(r netlink.Route, device string) *agentapi.Route {
	out := &agentapi.Route{Device: device, Scope: uint32(r.Scope)}
	if r.Gw != nil {
		out.Gateway = r.Gw.String()
	}
	if r.Src != nil {
		out.Source = r.Src.String()
	}
	p, _ := addrPrefix(r.Dst)
	switch {
	case p.Bits() != 0:
		out.Destination = p.Masked().String()
	case p.Addr().Is6() && r.Gw == nil:
		out.Destination = "::/0"
	default:
		out.Destination = "default"
	}
	return out
}

// describe names a route in errors, e.g. "route default via 10.88.0.1 dev
// eth0", from the request's own strings.
func describe(r *agentapi.Route) string {
	var b strings.Builder
	b.WriteString("route ")
	if d := r.GetDestination(); d != "" {
		b.WriteString(d)
	} else {
		b.WriteString("default")
	}
	if g := r.GetGateway(); g != "" {
		b.WriteString(" via " + g)
	}
	b.WriteString(" dev " + r.GetDevice())
	if s := r.GetSource(); s != "" {
		b.WriteString(" src " + s)
	}
	return b.String()
}
