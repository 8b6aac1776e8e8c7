package clh

import (
	"slices"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

// withAgentPolicy is spec with the agent's policy appended to its kernel
// arguments. Cloud Hypervisor has no fw_cfg to hand the guest a secret, so
// its agent expects no token: the control is the hybrid-vsock socket, a unix
// socket in the VM's 0700 run dir that only root can connect to (and CH has
// no host-wide vsock a CID would reach). The kernel command line, which only
// the host sets, tells the agent that this is the policy.
func withAgentPolicy(spec *vm.Spec, debugConsole bool) *vm.Spec {
	s := *spec
	s.KernelArgs = append(slices.Clone(spec.KernelArgs), vm.AgentPolicyArgs(agentapi.TokenSourceNone, debugConsole)...)
	return &s
}
