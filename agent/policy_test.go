package agent

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

func TestLoadPolicy(t *testing.T) {
	good := []byte("0123456789abcdef0123456789abcdef")
	files := func(m map[string][]byte) func(string) ([]byte, error) {
		return func(p string) ([]byte, error) {
			if b, ok := m[p]; ok {
				return b, nil
			}
			return nil, fs.ErrNotExist
		}
	}
	withToken := files(map[string][]byte{fwCfgTokenPath: good})
	for _, tc := range []struct {
		name    string
		cmdline string
		read    func(string) ([]byte, error)
		want    Policy
		wantErr bool
	}{
		{name: "nothing said: no token, no console", cmdline: "console=ttyS0 quiet", read: withToken},
		{name: "fw_cfg token read", cmdline: "quiet cocoon.agent_token=fw_cfg", read: withToken, want: Policy{Token: good}},
		{name: "told to expect a token that is missing", cmdline: "cocoon.agent_token=fw_cfg", read: files(nil), wantErr: true},
		{name: "short token", cmdline: "cocoon.agent_token=fw_cfg", read: files(map[string][]byte{fwCfgTokenPath: good[:16]}), wantErr: true},
		{name: "unknown token source", cmdline: "cocoon.agent_token=cmdline", read: withToken, wantErr: true},
		{name: "explicit none", cmdline: "cocoon.agent_token=none cocoon.debug_console=1", read: withToken, want: Policy{DebugConsole: true}},
		{name: "debug console needs =1", cmdline: "cocoon.debug_console=0 cocoon.debug_console", read: withToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadPolicy(tc.cmdline, tc.read)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if string(got.Token) != string(tc.want.Token) || got.DebugConsole != tc.want.DebugConsole {
				t.Fatalf("policy = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestAgentRefusesCallsWithoutTheToken: every unary call, the health check
// included, and every stream needs the token the VM was booted with.
func TestAgentRefusesCallsWithoutTheToken(t *testing.T) {
	policy := Policy{Token: testToken}
	for _, tc := range []struct {
		name string
		opts []ttrpc.ClientOpts
		want codes.Code
	}{
		{name: "no token", want: codes.Unauthenticated},
		{name: "wrong token", opts: []ttrpc.ClientOpts{agentclient.WithToken(append(testToken[:31:31], 'X'))}, want: codes.Unauthenticated},
		{name: "token prefix", opts: []ttrpc.ClientOpts{agentclient.WithToken(testToken[:31])}, want: codes.Unauthenticated},
		{name: "right token", opts: []ttrpc.ClientOpts{agentclient.WithToken(testToken)}, want: codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, h := serveWithPolicy(t, policy, tc.opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := h.Check(ctx, &agentapi.CheckRequest{}); status.Code(err) != tc.want {
				t.Errorf("Check: %v, want %v", err, tc.want)
			}
			// Removing a container that does not exist succeeds, once past the token.
			if _, err := a.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: "nope"}); status.Code(err) != tc.want {
				t.Errorf("RemoveContainer: %v, want %v", err, tc.want)
			}
			// On an authenticated connection the stream reaches its handler
			// (NotFound: no such container); otherwise it is refused.
			stream, err := a.ReadOutput(ctx, &agentapi.ReadOutputRequest{ContainerId: "nope"})
			if err == nil {
				_, err = stream.Recv()
			}
			wantStream := codes.NotFound
			if tc.want != codes.OK {
				wantStream = tc.want
			}
			if status.Code(err) != wantStream {
				t.Errorf("ReadOutput: %v, want %v", err, wantStream)
			}
		})
	}
}

// TestStreamNeedsAnAuthenticatedConnection: a stream opened before any call
// carried the token is refused even by a client that holds it (streams carry
// no metadata), which is why agentclient.Wait's health check needs the token.
func TestStreamNeedsAnAuthenticatedConnection(t *testing.T) {
	a, _ := serveWithPolicy(t, Policy{Token: testToken}, agentclient.WithToken(testToken))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := a.ReadOutput(ctx, &agentapi.ReadOutputRequest{ContainerId: "nope"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated || errors.Is(err, io.EOF) {
		t.Fatalf("ReadOutput before any authenticated call: %v, want Unauthenticated", err)
	}
}

// TestOpenAgentWithoutTokenPolicy: a VM booted with no token (Cloud
// Hypervisor's root-only socket) serves every call.
func TestOpenAgentWithoutTokenPolicy(t *testing.T) {
	_, h := serveWithPolicy(t, Policy{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.Check(ctx, &agentapi.CheckRequest{}); err != nil {
		t.Fatal(err)
	}
}

// TestGuestRootExecNeedsDebugConsole: the agent itself refuses a guest-root
// exec in a VM booted without cocoon.debug_console=1.
func TestGuestRootExecNeedsDebugConsole(t *testing.T) {
	for _, tc := range []struct {
		name    string
		console bool
		want    codes.Code
	}{
		{name: "booted without the console", console: false, want: codes.PermissionDenied},
		{name: "booted with the console", console: true, want: codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := serveWithPolicy(t, Policy{Token: testToken, DebugConsole: tc.console}, agentclient.WithToken(testToken))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "g", GuestRoot: true, Process: guestProcessJSON(t, nil, "true")})
			if status.Code(err) != tc.want {
				t.Fatalf("guest-root exec: %v, want %v", err, tc.want)
			}
			if err == nil {
				if _, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "g"}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
