package agent

// The agent's API policy. cocoond decides it when it boots a VM and tells the
// agent through the kernel command line, which only the host controls; the
// agent enforces it. The names live here so both ends share them.
const (
	// TokenMetadataKey is the ttRPC metadata key carrying the per-VM token.
	TokenMetadataKey = "cocoon-agent-token"
	// TokenSize is the length of the per-VM token in bytes.
	TokenSize = 32

	// KernelArgToken says where the agent finds its token:
	// "cocoon.agent_token=fw_cfg" (QEMU's fw_cfg file FwCfgTokenName) or
	// "cocoon.agent_token=none" (the channel itself is root-only; see
	// docs/ARCHITECTURE.md). Absent means none.
	KernelArgToken = "cocoon.agent_token"
	// TokenSourceFwCfg and TokenSourceNone are KernelArgToken's values.
	TokenSourceFwCfg = "fw_cfg"
	TokenSourceNone  = "none"
	// FwCfgTokenName is the fw_cfg item QEMU exposes the token as.
	FwCfgTokenName = "opt/cocoon/agent-token"

	// KernelArgDebugConsole ("cocoon.debug_console=1") allows guest-root
	// execs (ExecProcessRequest.guest_root); without it the agent refuses them.
	KernelArgDebugConsole = "cocoon.debug_console"
)
