// Package netconf configures the guest's network from what the host sends
// over ttRPC: it renames and addresses the NICs (found by MAC) and installs
// routes.
//
// Every function works on the calling thread's network namespace through
// netlink's package-level functions, which open a fresh socket per request.
// In the guest that is the only namespace there is; tests lock the thread
// and switch it into a namespace of their own.
package netconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// ErrNoSuchInterface is wrapped when a request names a NIC (by MAC or by
// device name) that the guest does not have.
var ErrNoSuchInterface = errors.New("no such interface")

// mu serialises changes: UpdateRoutes deletes then re-adds, and a rename may
// move another link aside, so concurrent ttRPC calls must not interleave.
var mu sync.Mutex

// dumpRetries bounds how often a dump interrupted by a concurrent change is
// retried; netlink returns partial results in that case.
const dumpRetries = 5

// dump runs a netlink dump, retrying when the kernel reports that the dump
// was interrupted (NLM_F_DUMP_INTR), so callers never act on a torn list.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := list()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < dumpRetries {
			continue
		}
		return v, err
	}
}

// BringUpLoopback sets lo up; as PID 1 the agent has nobody else to do it,
// and the kernel assigns 127.0.0.1/::1 itself once lo is up.
func BringUpLoopback() error {
	lo, err := linkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// listRoutes returns the main table's unicast routes, except those on
// loopback and IPv6 link-local (fe80::/64) routes the kernel adds per link;
// only those on the links in only when it is non-nil.
func listRoutes(only map[int]bool) (*agentapi.Routes, error) {
	links, err := dump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		if !isLoopback(l) {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	routes, err := mainRoutes(0)
	if err != nil {
		return nil, err
	}
	out := &agentapi.Routes{}
	for _, r := range routes {
		name, ok := names[r.LinkIndex]
		if !ok || (only != nil && !only[r.LinkIndex]) || !listable(r) {
			continue
		}
		out.Routes = append(out.Routes, toRoute(r, name))
	}
	return out, nil
}

// linkByName looks a device up, wrapping ErrNoSuchInterface when it is
// missing so the caller can answer NotFound.
func linkByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, fmt.Errorf("device %q: %w", name, ErrNoSuchInterface)
	}
	if err != nil {
		return nil, fmt.Errorf("device %q: %w", name, err)
	}
	return l, nil
}

func isLoopback(l netlink.Link) bool {
	return l.Attrs().Flags&net.FlagLoopback != 0
}

// toInterface converts a link and its addresses to the wire form.
func toInterface(l netlink.Link, addrs []netlink.Addr) *agentapi.Interface {
	a := l.Attrs()
	out := &agentapi.Interface{
		HwAddr: a.HardwareAddr.String(),
		Name:   a.Name,
		Mtu:    uint32(a.MTU),
	}
	for _, addr := range addrs {
		p, ok := addrPrefix(addr.IPNet)
		if !ok || isLinkLocal6(p.Addr()) {
			continue
		}
		out.Addresses = append(out.Addresses, &agentapi.IPAddress{Address: p.String()})
	}
	return out
}

// addrPrefix turns an address with its mask into a prefix that keeps the
// host bits ("10.88.0.5/16"), the form both the wire and the kernel use.
func addrPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	ip = ip.Unmap()
	if bits == 0 || ip.BitLen() != bits {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

// ipNet is the inverse of addrPrefix, with 4-byte IPv4 as netlink expects.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

func isLinkLocal6(ip netip.Addr) bool {
	return ip.Is6() && ip.IsLinkLocalUnicast()
}

// invalid wraps a malformed request so it can be told from kernel failures.
func invalid(item string, err error) error {
	return fmt.Errorf("%s: %w: %w", item, errdefs.ErrInvalidArgument, err)
}
