package agent

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// fwCfgTokenPath is where the guest kernel's qemu_fw_cfg module shows the
// token QEMU was given with -fw_cfg.
const fwCfgTokenPath = "/sys/firmware/qemu_fw_cfg/by_name/" + agentapi.FwCfgTokenName + "/raw"

// Policy is what this VM's agent accepts. The host decides it at boot (the
// kernel command line) and the agent enforces it.
type Policy struct {
	// Token, when set, must come with every request, hex-encoded (metadata
	// agentapi.TokenMetadataKey). Empty means the channel itself is the
	// control (Cloud Hypervisor's root-only hybrid-vsock socket).
	Token []byte
	// DebugConsole allows guest-root execs (cocoond's debug console).
	DebugConsole bool
	// HostMode is a host pod's agent (hostmode.go): it refuses the calls
	// that would configure the host it runs on.
	HostMode bool
}

// LoadPolicy reads the policy from a kernel command line; readFile reads the
// token (os.ReadFile in the guest). A VM told to expect a token that cannot
// read a well-formed one is an error: the agent must not serve then.
func LoadPolicy(cmdline string, readFile func(string) ([]byte, error)) (Policy, error) {
	var p Policy
	source := agentapi.TokenSourceNone
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case agentapi.KernelArgToken:
			source = v
		case agentapi.KernelArgDebugConsole:
			p.DebugConsole = v == "1"
		}
	}
	switch source {
	case agentapi.TokenSourceNone:
		return p, nil
	case agentapi.TokenSourceFwCfg:
		tok, err := readFile(fwCfgTokenPath)
		if err != nil {
			return p, fmt.Errorf("agent token expected from fw_cfg: %w", err)
		}
		if len(tok) != agentapi.TokenSize {
			return p, fmt.Errorf("agent token from fw_cfg has %d bytes, want %d: %w", len(tok), agentapi.TokenSize, errdefs.ErrInvalidArgument)
		}
		p.Token = tok
		return p, nil
	default:
		return p, fmt.Errorf("%s=%q: unknown token source: %w", agentapi.KernelArgToken, source, errdefs.ErrInvalidArgument)
	}
}

// loadGuestPolicy reads the policy of the VM the agent runs in.
func loadGuestPolicy() (Policy, error) {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return Policy{}, err
	}
	return LoadPolicy(string(cmdline), os.ReadFile)
}

var errUnauthenticated = status.Error(codes.Unauthenticated, "agent: missing or wrong agent token")

// connAuthKey holds a *atomic.Bool per connection: set once a request on the
// connection carried the right token.
type connAuthKey struct{}

// authorize checks a request's metadata against the token in constant time.
func (p Policy) authorize(ctx context.Context) error {
	if len(p.Token) == 0 {
		return nil
	}
	vals, _ := ttrpc.GetMetadata(ctx)
	got, _ := vals.Get(agentapi.TokenMetadataKey)
	want := []byte(hex.EncodeToString(p.Token)) // metadata values are strings: UTF-8
	ok := 0
	for _, v := range got {
		ok |= subtle.ConstantTimeCompare([]byte(v), want)
	}
	if ok != 1 {
		return errUnauthenticated
	}
	if a, _ := ctx.Value(connAuthKey{}).(*atomic.Bool); a != nil {
		a.Store(true)
	}
	return nil
}

// unaryInterceptor refuses every unary call, Check included, without the
// token. Check too: it is what proves a connection before its streams (see
// authorizeStream), and a host with a wrong token learns at once.
// Each call's duration is logged at debug level (cocoon.log=debug on the
// kernel command line): the guest's own view of where pod start time goes.
func (p Policy) unaryInterceptor(ctx context.Context, um ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	if err := p.authorize(ctx); err != nil {
		return nil, err
	}
	if p.HostMode && hostRefused[info.FullMethod] {
		return nil, status.Errorf(codes.PermissionDenied, "%s: a host pod's agent does not configure the host", info.FullMethod)
	}
	start := time.Now()
	resp, err := m(ctx, um)
	if logrus.IsLevelEnabled(logrus.DebugLevel) {
		logrus.WithFields(logrus.Fields{"method": path.Base(info.FullMethod), "took": time.Since(start).String(), "error": err}).Debug("call")
	}
	return resp, err
}

// authorizeStream admits a stream only on a connection that already made a
// call with the right token: ttRPC v1.2 clients send no metadata on streams,
// and a connection (vsock or the serial port) cannot be taken over by another
// peer once open.
func (p Policy) authorizeStream(ctx context.Context) error {
	if len(p.Token) == 0 {
		return nil
	}
	if a, _ := ctx.Value(connAuthKey{}).(*atomic.Bool); a != nil && a.Load() {
		return nil
	}
	return errUnauthenticated
}

// allowGuestRoot says whether a guest-root exec may run in this VM.
func (p Policy) allowGuestRoot() error {
	if !p.DebugConsole {
		return status.Errorf(codes.PermissionDenied, "guest-root exec refused: the VM was booted without %s=1", agentapi.KernelArgDebugConsole)
	}
	return nil
}
