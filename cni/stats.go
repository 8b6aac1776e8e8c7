package cni

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// InterfaceStats are one interface's counters as the pod sees them: Rx is
// what reached the pod, Tx what it sent.
type InterfaceStats struct {
	Name     string
	RxBytes  uint64
	RxErrors uint64
	TxBytes  uint64
	TxErrors uint64
}

// ReadInterfaceStats reads the pod's CNI interface (IfName) in its netns
// through a netlink socket opened there; no thread enters the namespace. For
// a VM pod this veth carries all the guest's traffic (tc redirects the tap's
// to it), so it is the pod's network usage.
func ReadInterfaceStats(netnsPath string) (*InterfaceStats, error) {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	defer h.Close()
	l, err := h.LinkByName(IfName)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", IfName, netnsPath, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		return nil, fmt.Errorf("%s in %s: the kernel gave no counters", IfName, netnsPath)
	}
	return &InterfaceStats{Name: IfName, RxBytes: s.RxBytes, RxErrors: s.RxErrors, TxBytes: s.TxBytes, TxErrors: s.TxErrors}, nil
}
