package agent

// Host pods: cocoon-agent runs on the host as a host pod's sandbox process
// ("cocoon-agent host", started by vm/host). The names both ends share live
// here.
const (
	// AgentServiceName is the ttRPC name of the Agent service.
	AgentServiceName = "cocoon.agent.v1.Agent"

	// HostModeArg is the agent's first argument in host mode.
	HostModeArg = "host"

	// A host pod's container specs name the pod's own namespaces by these
	// placeholder paths; the host-mode agent, which made the namespaces at
	// CreateSandbox, puts their real paths in before libcontainer sees the
	// spec. A pod that shares the host's namespace names none.
	HostPodPIDNamespace = "/run/cocoon/host-pod/pid"
	HostPodIPCNamespace = "/run/cocoon/host-pod/ipc"
	HostPodUTSNamespace = "/run/cocoon/host-pod/uts"
)
