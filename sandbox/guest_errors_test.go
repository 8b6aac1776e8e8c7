package sandbox

import (
	"context"
	"io"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// refusingAgent is a guest agent that answers StartContainer and ExecProcess
// with an error status of its choosing (a compromised guest can answer any).
type refusingAgent struct {
	*agenttest.Hostile
	code codes.Code
}

func (a refusingAgent) StartContainer(context.Context, *agentapi.ContainerRequest) (*emptypb.Empty, error) {
	return nil, status.Error(a.code, "the guest's own words")
}

func (a refusingAgent) ExecProcess(context.Context, *agentapi.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, status.Error(a.code, "the guest's own words")
}

// refusingPod serves a refusingAgent over real ttRPC and connects to it the
// way every pod connects to its agent (Manager.waitAgent), so the client
// carries the production interceptors.
func refusingPod(t *testing.T, m *Manager, prefix string, code codes.Code) (podID, ctrID string) {
	t.Helper()
	sock := agenttest.Serve(t, refusingAgent{Hostile: &agenttest.Hostile{}, code: code}, agenttest.Healthy{})
	client, err := m.waitAgent(context.Background(), &fakeVMM{agentSock: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	podID, ctrID = pad(prefix+"p"), pad(prefix+"c")
	addPod(t, m, podID, "pod-"+prefix, "default", StateReady)
	if err := m.containers.add(Container{ID: ctrID, PodID: podID, Name: "c-" + prefix, State: StateCreated}); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.live[podID] = &podRuntime{agent: agentapi.NewAgentClient(client), outputs: map[string]*output{}}
	m.mu.Unlock()
	return podID, ctrID
}

// TestGuestCodesDoNotChooseOurs: an agent's error code reaches cocoond's
// callers only where sandbox/ translates it on purpose. Elsewhere the error
// carries no gRPC status and no errdefs sentinel, so cri/instrument.go
// answers kubelet Unknown; the guest's words stay in the message.
func TestGuestCodesDoNotChooseOurs(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	for i, tt := range []struct {
		code codes.Code
		call string // "start" (StartContainer) or "console" (DebugConsole)
		want error  // the sentinel sandbox translates to; nil: none
		msg  string
	}{
		{codes.NotFound, "start", nil, "agent StartContainer: guest said NotFound: the guest's own words"},
		{codes.InvalidArgument, "start", nil, "agent StartContainer: guest said InvalidArgument: the guest's own words"},
		{codes.AlreadyExists, "start", nil, "guest said AlreadyExists"},
		{codes.FailedPrecondition, "start", nil, "guest said FailedPrecondition"},
		{codes.PermissionDenied, "start", nil, "guest said PermissionDenied"},
		{codes.Unauthenticated, "start", nil, "guest said Unauthenticated"},
		// The debug console translates the two answers an old or
		// policy-bound agent gives.
		{codes.NotFound, "console", errdefs.ErrFailedPrecondition, "rebuild the guest"},
		{codes.FailedPrecondition, "console", errdefs.ErrFailedPrecondition, "the guest's own words"},
		{codes.InvalidArgument, "console", nil, "agent ExecProcess: guest said InvalidArgument"},
	} {
		t.Run(tt.call+" "+tt.code.String(), func(t *testing.T) {
			podID, ctrID := refusingPod(t, m, string(rune('a'+i)), tt.code)
			var err error
			if tt.call == "start" {
				err = m.StartContainer(context.Background(), ctrID)
			} else {
				_, err = m.DebugConsole(context.Background(), podID, ShellOptions{}, nil, nopWriteCloser{}, nopWriteCloser{}, nil)
			}
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want one saying %q", err, tt.msg)
			}
			if st, ok := status.FromError(err); ok {
				t.Fatalf("error %v carries the guest's status %s", err, st.Code())
			}
			got := cerrdefs.Resolve(err)
			want := tt.want
			if want == nil {
				want = cerrdefs.ErrUnknown
			}
			if got != want {
				t.Fatalf("error %v resolves to %v, want %v", err, got, want)
			}
		})
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Write(p []byte) (int, error) { return len(p), nil }
func (nopWriteCloser) Close() error                { return nil }
