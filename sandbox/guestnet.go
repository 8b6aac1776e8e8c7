package sandbox

import (
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/cni"
)

// scopeLink is RT_SCOPE_LINK as the agent's Route.scope carries it.
const scopeLink = 253

// AgentNetwork turns cni's description of the guest NIC into what the agent
// applies (UpdateInterface by MAC, then UpdateRoutes, routes in g's order).
// The translation lives here so cni/ knows nothing of the agent protocol.
func AgentNetwork(g cni.GuestNetwork) (*agentapi.Interface, *agentapi.Routes) {
	iface := &agentapi.Interface{HwAddr: g.MAC.String(), Name: g.Name, Mtu: uint32(max(g.MTU, 0))}
	for _, p := range g.Addresses {
		iface.Addresses = append(iface.Addresses, &agentapi.IPAddress{Address: p.String()})
	}
	routes := &agentapi.Routes{}
	for _, rt := range g.Routes {
		r := &agentapi.Route{Destination: rt.Dst.String(), Device: g.Name}
		switch {
		case !rt.GW.IsValid():
			r.Scope = scopeLink
		case rt.Dst.Bits() == 0:
			r.Destination, r.Gateway = "default", rt.GW.String()
		default:
			r.Gateway = rt.GW.String()
		}
		routes.Routes = append(routes.Routes, r)
	}
	return iface, routes
}
