package vm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// AgentTokenFile is the per-VM agent token's file in the VM's 0700 run dir.
// The VMM reads it at start-up (QEMU -fw_cfg); cocoond re-reads it when it
// adopts the VM after a restart. It is never in the pod share, never on a
// command line.
const AgentTokenFile = "agent-token"

// NewAgentToken writes a fresh random token to runDir's AgentTokenFile
// (mode 0600, never over an existing file) and returns its path and value.
func NewAgentToken(runDir string) (string, []byte, error) {
	tok := make([]byte, agentapi.TokenSize)
	if _, err := rand.Read(tok); err != nil {
		return "", nil, err
	}
	path := filepath.Join(runDir, AgentTokenFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", nil, fmt.Errorf("agent token: %w", err)
	}
	_, err = f.Write(tok)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return "", nil, fmt.Errorf("agent token: %w", err)
	}
	return path, tok, nil
}

// ReadAgentToken reads the token NewAgentToken wrote in runDir.
func ReadAgentToken(runDir string) ([]byte, error) {
	tok, err := agentapi.ReadTokenFile(filepath.Join(runDir, AgentTokenFile))
	if errors.Is(err, agentapi.ErrMalformedToken) {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return tok, err
}

// AgentPolicyArgs are the kernel arguments that tell the agent its policy:
// where its token is (agentapi.TokenSourceFwCfg or TokenSourceNone) and
// whether guest-root execs (the debug console) are allowed. Drivers append
// them after the configured kernel_args: the agent takes the last value, so
// only the drivers' options (cocoond's [debug] console) decide.
func AgentPolicyArgs(tokenSource string, debugConsole bool) []string {
	console := "0"
	if debugConsole {
		console = "1"
	}
	return []string{agentapi.KernelArgToken + "=" + tokenSource, agentapi.KernelArgDebugConsole + "=" + console}
}
