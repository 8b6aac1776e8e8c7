package netconf

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// UpdateInterface configures the link whose MAC is iface.HwAddr: renames it
// to iface.Name (when set), sets iface.Mtu (when non-zero), makes its
// addresses exactly iface.Addresses (IPv6 link-local ones are kept) and sets
// it up. It returns the interface as the kernel then reports it.
//
// The request is validated before anything is changed. If the wanted name
// belongs to another link that is down (NICs the host has not configured
// yet), that link is renamed to "rename<ifindex>" so two NICs can swap names.
func UpdateInterface(iface *agentapi.Interface) (*agentapi.Interface, error) {
	item := fmt.Sprintf("interface %s", iface.GetHwAddr())
	mac, err := net.ParseMAC(iface.GetHwAddr())
	if err != nil {
		return nil, invalid(item, err)
	}
	item = fmt.Sprintf("interface %s", mac)
	name := iface.GetName()
	if len(name) >= unix.IFNAMSIZ {
		return nil, invalid(item, fmt.Errorf("name %q longer than %d bytes", name, unix.IFNAMSIZ-1))
	}
	want, err := parseAddrs(iface.GetAddresses())
	if err != nil {
		return nil, invalid(item, err)
	}
	var newMAC net.HardwareAddr
	if s := iface.GetSetHwAddr(); s != "" {
		if newMAC, err = net.ParseMAC(s); err != nil || len(newMAC) != 6 || newMAC[0]&1 != 0 {
			return nil, invalid(item, fmt.Errorf("new MAC %q: not a unicast Ethernet address", s))
		}
	}

	mu.Lock()
	defer mu.Unlock()

	link, err := linkByMAC(mac)
	if err != nil {
		return nil, err
	}
	attrs := link.Attrs()
	if name != "" {
		item = fmt.Sprintf("interface %s (%s)", mac, name)
	}
	if name != "" && name != attrs.Name {
		if err := rename(link, name); err != nil {
			return nil, fmt.Errorf("%s: %w", item, err)
		}
	}
	if newMAC != nil && !bytes.Equal(newMAC, attrs.HardwareAddr) {
		// Down first: not every NIC driver changes its address while up.
		if err := netlink.LinkSetDown(link); err != nil {
			return nil, fmt.Errorf("%s: set down for MAC change: %w", item, err)
		}
		if err := netlink.LinkSetHardwareAddr(link, newMAC); err != nil {
			return nil, fmt.Errorf("%s: set MAC %s: %w", item, newMAC, err)
		}
	}
	if mtu := iface.GetMtu(); mtu != 0 && int(mtu) != attrs.MTU {
		if err := netlink.LinkSetMTU(link, int(mtu)); err != nil {
			return nil, fmt.Errorf("%s: set mtu %d: %w", item, mtu, err)
		}
	}
	if err := replaceAddrs(link, want); err != nil {
		return nil, fmt.Errorf("%s: %w", item, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("%s: set up: %w", item, err)
	}

	// Read back by index: the name (and so link's attrs) may have changed.
	got, err := netlink.LinkByIndex(attrs.Index)
	if err != nil {
		return nil, fmt.Errorf("%s: read back: %w", item, err)
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(got, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("%s: read back addresses: %w", item, err)
	}
	return toInterface(got, addrs), nil
}

// parseAddrs validates the wanted addresses, dropping duplicates.
func parseAddrs(in []*agentapi.IPAddress) ([]netip.Prefix, error) {
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, a := range in {
		p, err := netip.ParsePrefix(a.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", a.GetAddress(), err)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
		if !p.IsValid() {
			return nil, fmt.Errorf("address %q: not an address", a.GetAddress())
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// linkByMAC finds the non-loopback link with this MAC. Should several share
// it (a VLAN on its parent), the lowest ifindex wins: that is the NIC the
// kernel probed, not something created on top of it later.
func linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := dump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var found netlink.Link
	for _, l := range links {
		if isLoopback(l) || !bytes.Equal(l.Attrs().HardwareAddr, mac) {
			continue
		}
		if found == nil || l.Attrs().Index < found.Attrs().Index {
			found = l
		}
	}
	if found == nil {
		return nil, fmt.Errorf("interface with MAC %s: %w", mac, ErrNoSuchInterface)
	}
	return found, nil
}

// rename sets the link down (the kernel refuses to rename a running link)
// and renames it, first moving aside a down link that holds the name.
func rename(link netlink.Link, name string) error {
	if err := netlink.LinkSetDown(link); err != nil {
		return fmt.Errorf("set down for rename: %w", err)
	}
	other, err := netlink.LinkByName(name)
	if err == nil && other.Attrs().Index != link.Attrs().Index && other.Attrs().Flags&net.FlagUp == 0 {
		aside := fmt.Sprintf("rename%d", other.Attrs().Index)
		if err := netlink.LinkSetName(other, aside); err != nil {
			return fmt.Errorf("move %s aside to %s: %w", name, aside, err)
		}
	}
	// A link that is up keeps its name: the kernel then reports EEXIST.
	if err := netlink.LinkSetName(link, name); err != nil {
		return fmt.Errorf("rename %s to %s: %w", link.Attrs().Name, name, err)
	}
	return nil
}

// replaceAddrs makes the link's addresses exactly want, keeping IPv6
// link-local ones. It deletes before adding: deleting a primary IPv4 address
// also deletes the secondaries of its subnet (unless promote_secondaries),
// which would take a just-added address with it.
func replaceAddrs(link netlink.Link, want []netip.Prefix) error {
	keep := map[netip.Prefix]bool{}
	for _, p := range want {
		keep[p] = true
	}
	have, err := linkAddrs(link)
	if err != nil {
		return err
	}
	for p, a := range have {
		if keep[p] || isLinkLocal6(p.Addr()) {
			continue
		}
		// EADDRNOTAVAIL: it went with a primary deleted just before.
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete address %s: %w", p, err)
		}
	}
	// List again: deletions may have removed wanted secondaries.
	if have, err = linkAddrs(link); err != nil {
		return err
	}
	for _, p := range want {
		if _, ok := have[p]; ok {
			continue
		}
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			// The host's IPAM already made the address unique, and a
			// tentative address cannot be a route's source or bound to
			// until DAD ends, so skip DAD.
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	return nil
}

// linkAddrs returns the link's addresses keyed by prefix.
func linkAddrs(link netlink.Link) (map[netip.Prefix]netlink.Addr, error) {
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := map[netip.Prefix]netlink.Addr{}
	for _, a := range addrs {
		if p, ok := addrPrefix(a.IPNet); ok {
			out[p] = a
		}
	}
	return out, nil
}
