package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cocoon-runtime/cocoon/cni"
)

// CNINetwork attaches pods through cni/: a netns of their own, CNI ADD in it,
// and a tap whose traffic tc redirects to and from the CNI veth.
type CNINetwork struct {
	NetnsRoot string
	CNI       *cni.Manager
}

// Attach implements network.
func (n *CNINetwork) Attach(ctx context.Context, req PodNetworkRequest) (_ *PodNetwork, err error) {
	ns, err := cni.NewNetns(n.NetnsRoot, req.PodID)
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Detach(context.Background(), req.PodID, ns.Path()))
		}
	}()
	res, err := n.CNI.Setup(ctx, cniPod(req, ns.Path()))
	if err != nil {
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	if req.NoTap {
		// A host pod's containers use the CNI interface in the netns.
		out := &PodNetwork{NetnsPath: ns.Path()}
		for _, ip := range res.IPs {
			out.IPs = append(out.IPs, ip.String())
		}
		return out, nil
	}
	tap, err := cni.SetupTap(ns.Path(), res.Interface)
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	return podNetwork(ns.Path(), tap, res), nil
}

// cniPod is the CNI view of a pod in netnsPath.
func cniPod(req PodNetworkRequest, netnsPath string) cni.PodNetwork {
	pod := cni.PodNetwork{
		ID: req.PodID, Name: req.Name, Namespace: req.Namespace, UID: req.UID,
		NetnsPath: netnsPath, PodCIDR: req.PodCIDR,
	}
	for _, pm := range req.PortMappings {
		pod.PortMappings = append(pod.PortMappings, cni.PortMapping{
			HostPort: pm.GetHostPort(), ContainerPort: pm.GetContainerPort(),
			Protocol: protocolName(pm.GetProtocol().String()), HostIP: pm.GetHostIp(),
		})
	}
	return pod
}

// podNetwork is what the pod's VM and guest need from CNI's result.
func podNetwork(netnsPath string, tap *cni.Tap, res *cni.Result) *PodNetwork {
	iface, routes := AgentNetwork(res.Guest())
	out := &PodNetwork{
		NetnsPath: netnsPath, Tap: tap.File, MAC: tap.MAC, MTU: tap.MTU,
		Interface: iface, Routes: routes,
	}
	for _, ip := range res.IPs {
		out.IPs = append(out.IPs, ip.String())
	}
	return out
}

// Detach implements network; every part tolerates being already undone.
func (n *CNINetwork) Detach(ctx context.Context, podID, netnsPath string) error {
	return errors.Join(
		cni.TeardownTap(netnsPath),
		n.CNI.Teardown(ctx, podID),
		cni.RemoveNetns(netnsPath),
	)
}

// Attached implements network: the pods with a CNI record or a netns pin,
// each with its netns path.
func (n *CNINetwork) Attached() (map[string]string, error) {
	out := map[string]string{}
	ids, err := n.CNI.Attached()
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(n.NetnsRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range entries {
		ids = append(ids, e.Name())
	}
	for _, id := range ids {
		out[id] = filepath.Join(n.NetnsRoot, id)
	}
	return out, nil
}

// Stats implements network.
func (n *CNINetwork) Stats(netnsPath string) (*cni.InterfaceStats, error) {
	return cni.ReadInterfaceStats(netnsPath)
}

// protocolName maps CRI's TCP/UDP/SCTP enum names to CNI's lower case.
func protocolName(p string) string {
	switch p {
	case "UDP":
		return "udp"
	case "SCTP":
		return "sctp"
	}
	return "tcp"
}
