package netconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// AddNeighbors installs permanent (NUD_PERMANENT) ARP/NDP entries, replacing
// any entry for the same address and device. The whole request is validated
// before the first entry is written; entries before a failing one stay.
func AddNeighbors(n *agentapi.Neighbors) error {
	type entry struct {
		item string
		neigh
	}
	entries := make([]entry, 0, len(n.GetNeighbors()))
	for _, nb := range n.GetNeighbors() {
		item := fmt.Sprintf("neighbor %s lladdr %s dev %s", nb.GetIpAddress(), nb.GetHwAddr(), nb.GetDevice())
		e, err := parseNeighbor(nb)
		if err != nil {
			return invalid(item, err)
		}
		entries = append(entries, entry{item, e})
	}

	mu.Lock()
	defer mu.Unlock()

	for _, e := range entries {
		l, err := linkByName(e.device)
		if err != nil {
			return fmt.Errorf("%s: %w", e.item, err)
		}
		family := netlink.FAMILY_V4
		if e.ip.Is6() {
			family = netlink.FAMILY_V6
		}
		err = netlink.NeighSet(&netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       family,
			State:        netlink.NUD_PERMANENT,
			IP:           e.ip.AsSlice(),
			HardwareAddr: e.mac,
		})
		if err != nil {
			return fmt.Errorf("%s: %w", e.item, err)
		}
	}
	return nil
}

// neigh is one validated entry of an AddNeighbors request.
type neigh struct {
	ip     netip.Addr
	mac    net.HardwareAddr
	device string
}

func parseNeighbor(nb *agentapi.Neighbor) (neigh, error) {
	var e neigh
	if e.device = nb.GetDevice(); e.device == "" {
		return e, errors.New("no device")
	}
	ip, err := parseIP(nb.GetIpAddress())
	if err != nil {
		return e, fmt.Errorf("ip address: %w", err)
	}
	e.ip = ip
	if e.mac, err = net.ParseMAC(nb.GetHwAddr()); err != nil {
		return e, err
	}
	return e, nil
}
