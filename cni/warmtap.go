package cni

import (
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
)

// CreateTap makes the pod's tap in netnsPath before there is a veth to
// connect it to: a warm pool VM boots on it in the netns that becomes its
// pod's, and ConnectTap joins it to the pod's veth once CNI ADD has made one.
// Until then the tap is down and connected to nothing: the VM has no network.
// The returned file is the tap's only reference besides the VMM's.
func CreateTap(netnsPath string) (*os.File, error) {
	ns, err := OpenNetns(netnsPath)
	if err != nil {
		return nil, err
	}
	var f *os.File
	err = ns.Do(func() error {
		var err error
		f, err = openTap(TapName)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tap in %s: %w", netnsPath, err)
	}
	return f, nil
}

// ConnectTap connects the tap CreateTap made (and a VMM holds) to the pod's
// veth with the same tc redirects SetupTap adds, and reports the veth's MAC
// and MTU, which the guest NIC must take. The returned Tap has no File: the
// VMM has the tap already.
func ConnectTap(netnsPath, veth string) (tap *Tap, err error) {
	ns, err := OpenNetns(netnsPath)
	if err != nil {
		return nil, err
	}
	err = ns.Do(func() error {
		v, err := netlink.LinkByName(veth)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", veth, err)
		}
		if _, err := netlink.LinkByName(TapName); err != nil {
			return fmt.Errorf("the VM's tap %s: %w", TapName, err)
		}
		tap = &Tap{Name: TapName, MAC: v.Attrs().HardwareAddr, MTU: v.Attrs().MTU}
		if err := redirect(v, tap); err != nil {
			_ = cleanRedirects()
			tap = nil
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tap in %s: %w", netnsPath, err)
	}
	return tap, nil
}
