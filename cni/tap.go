package cni

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TapName is the tap that carries the pod's traffic to the VM, in the pod
// netns (so every pod can use the same name).
const TapName = "tap0_cocoon"

// tapFilterPrio marks the redirect filters as ours, so TeardownTap finds
// them (and only them) from the netns path alone, even once the tap is gone.
const tapFilterPrio = 0xc0c0

// ingressParent is the ingress qdisc's handle (ffff:), the filters' parent.
var ingressParent = netlink.MakeHandle(0xffff, 0)

// Tap is the VM's end of the pod network.
type Tap struct {
	// File is the open tap: give it to the VMM (vm.NIC.Tap). The tap is not
	// persistent, so it disappears when the last copy of File is closed
	// (cocoond's and the VMM's).
	File *os.File
	Name string
	// MAC is the veth's: the guest NIC must use it, so that the pod IP's
	// owner is the same MAC on the wire that the bridge and ARP caches
	// learned from the veth.
	MAC net.HardwareAddr
	MTU int
}

// SetupTap connects a new tap to the pod's veth the way Kata's "tcfilter"
// model does: ingress qdiscs on both, and a u32 match-all filter on each
// that redirects every frame to the other's egress. Frames from the cluster
// reach the VM untouched and the guest's frames leave through the veth as if
// the veth had sent them; the netns's own stack sees none of it.
//
// The tap is IFF_TAP|IFF_NO_PI|IFF_VNET_HDR: QEMU finds the vnet header with
// TUNGETIFF and then passes checksum and segmentation offloads through
// (guest TSO frames cross the redirect as one skb), which a tap without it
// cannot; -netdev tap,fd=N needs no option for it.
//
// The veth keeps its addresses: CNI CHECK compares them with the result, and
// the bridge plugin's DEL reads them to undo ipMasq rules. They cost
// nothing, as the netns stack never receives a frame: ARP for the pod IP is
// answered by the guest, which owns the IP.
func SetupTap(netnsPath, veth string) (*Tap, error) {
	f, err := CreateTap(netnsPath)
	if err != nil {
		return nil, err
	}
	tap, err := ConnectTap(netnsPath, veth)
	if err != nil {
		f.Close() // the tap goes with its only fd, and its qdisc with it
		return nil, err
	}
	tap.File = f
	return tap, nil
}

// openTap creates a non-persistent tap in the current thread's netns.
func openTap(name string) (*os.File, error) {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		err = unix.IoctlIfreq(int(f.Fd()), unix.TUNSETIFF, ifr)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	return f, nil
}

// redirect brings the tap up with the veth's MTU and adds the qdiscs and
// filters in both directions.
func redirect(veth netlink.Link, tap *Tap) error {
	t, err := netlink.LinkByName(tap.Name)
	if err != nil {
		return err
	}
	// The netns's own IPv6 chatter (router solicitations, MLD) on the tap
	// would reach the guest; the tap never needs an address. Best effort:
	// the knob is missing where IPv6 is disabled.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+tap.Name+"/disable_ipv6", []byte("1"), 0)
	if err := netlink.LinkSetMTU(t, tap.MTU); err != nil {
		return fmt.Errorf("tap MTU %d: %w", tap.MTU, err)
	}
	if err := netlink.LinkSetUp(t); err != nil {
		return fmt.Errorf("tap up: %w", err)
	}
	for _, l := range []netlink.Link{veth, t} {
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index, Handle: ingressParent, Parent: netlink.HANDLE_INGRESS,
		}}
		// EEXIST: an ingress qdisc is shared by all its filters; reuse it.
		if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ingress qdisc on %s: %w", l.Attrs().Name, err)
		}
	}
	for _, p := range [][2]netlink.Link{{veth, t}, {t, veth}} {
		from, to := p[0].Attrs(), p[1].Attrs()
		f := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: from.Index, Parent: ingressParent,
				Priority: tapFilterPrio, Protocol: unix.ETH_P_ALL,
			},
			// No selector: netlink makes it match-all. STOLEN: the frame
			// is the other device's now, the stack never sees it.
			Actions: []netlink.Action{netlink.NewMirredAction(to.Index)},
		}
		if err := netlink.FilterAdd(f); err != nil {
			return fmt.Errorf("redirect %s → %s: %w", from.Name, to.Name, err)
		}
	}
	return nil
}

// TeardownTap removes the redirect filters, the ingress qdiscs they leave
// empty and the tap from the pod's netns. It is idempotent, works from the
// path alone (after a restart) and with the netns gone (nothing to do).
func TeardownTap(netnsPath string) error {
	ns, err := OpenNetns(netnsPath)
	if err != nil {
		if ok, serr := isNetns(netnsPath); serr != nil || !ok {
			return nil
		}
		return err
	}
	err = ns.Do(func() error {
		if t, err := netlink.LinkByName(TapName); err == nil {
			// Deleting a tap that the VMM still holds detaches it; the
			// VMM's fd then reads EOF-like errors, as on a hot unplug.
			if err := netlink.LinkDel(t); err != nil && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("delete %s: %w", TapName, err)
			}
		}
		return cleanRedirects()
	})
	if err != nil {
		return fmt.Errorf("tap teardown in %s: %w", netnsPath, err)
	}
	return nil
}

// cleanRedirects deletes our filters on every link of the current netns and
// the ingress qdiscs left without filters. In a pod netns only we add
// ingress qdiscs, so an empty one is ours (left by a crash between the
// qdisc and its filter).
func cleanRedirects() error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		filters, err := netlink.FilterList(l, ingressParent)
		if err != nil {
			if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("filters on %s: %w", l.Attrs().Name, err))
			}
			continue
		}
		// u32 lists a hash-table entry and the rule under the same
		// priority; deleting the priority (handle 0) removes both.
		left, ours := 0, false
		for _, f := range filters {
			if isRedirect(f) {
				ours = true
			} else {
				left++
			}
		}
		if ours {
			del := &netlink.U32{FilterAttrs: netlink.FilterAttrs{
				LinkIndex: l.Attrs().Index, Parent: ingressParent,
				Priority: tapFilterPrio, Protocol: unix.ETH_P_ALL,
			}}
			if err := netlink.FilterDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("filter on %s: %w", l.Attrs().Name, err))
				left++
			}
		}
		if left > 0 {
			continue
		}
		qdiscs, err := netlink.QdiscList(l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, q := range qdiscs {
			if _, ok := q.(*netlink.Ingress); ok {
				if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
					errs = append(errs, fmt.Errorf("ingress qdisc on %s: %w", l.Attrs().Name, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// isRedirect reports whether f is (part of) one of SetupTap's filters: a
// u32 at our priority.
func isRedirect(f netlink.Filter) bool {
	u, ok := f.(*netlink.U32)
	return ok && u.Priority == tapFilterPrio
}
