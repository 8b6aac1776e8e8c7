package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/cocoon-runtime/cocoon/cni"
)

// warmNetwork is what the warm pool needs from the network besides network:
// a warm VM boots on a tap in the netns that becomes its pod's, and CNI ADD
// runs in that netns when a pod claims the VM.
type warmNetwork interface {
	// Hold makes podID's netns with a tap that connects to nothing yet.
	// Detach(podID, netnsPath) undoes it.
	Hold(ctx context.Context, podID string) (netnsPath string, tap *os.File, err error)
	// AttachHeld runs CNI ADD in a netns Hold made and connects its tap to
	// the pod's veth. The PodNetwork's Tap is nil: the VMM holds the tap.
	// On error the caller still owns the netns (Detach undoes all).
	AttachHeld(ctx context.Context, req PodNetworkRequest, netnsPath string) (*PodNetwork, error)
}

// Hold implements warmNetwork.
func (n *CNINetwork) Hold(_ context.Context, podID string) (_ string, _ *os.File, err error) {
	ns, err := cni.NewNetns(n.NetnsRoot, podID)
	if err != nil {
		return "", nil, fmt.Errorf("netns: %w", err)
	}
	tap, err := cni.CreateTap(ns.Path())
	if err != nil {
		return "", nil, errors.Join(fmt.Errorf("tap: %w", err), ns.Remove())
	}
	return ns.Path(), tap, nil
}

// AttachHeld implements warmNetwork.
func (n *CNINetwork) AttachHeld(ctx context.Context, req PodNetworkRequest, netnsPath string) (*PodNetwork, error) {
	res, err := n.CNI.Setup(ctx, cniPod(req, netnsPath))
	if err != nil {
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	tap, err := cni.ConnectTap(netnsPath, res.Interface)
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	return podNetwork(netnsPath, tap, res), nil
}
