package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// addPod stores a pod record as RunPod would.
func addPod(t *testing.T, m *Manager, id, name, namespace string, state PodState) {
	t.Helper()
	md := &runtimeapi.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: "uid-" + id[:4], Attempt: 0}
	raw, err := marshalConfig(&runtimeapi.PodSandboxConfig{Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.pods.add(Pod{ID: id, Name: podName(md), Config: raw, State: state}); err != nil {
		t.Fatal(err)
	}
}

func pad(prefix string) string { return prefix + strings.Repeat("0", 64-len(prefix)) }

func TestFindPod(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	addPod(t, m, pad("aaaa1"), "web", "default", StateReady)
	addPod(t, m, pad("aaaa2"), "db", "prod", StateReady)
	// kubelet's stopped attempt beside its successor: the name picks the ready one.
	addPod(t, m, pad("bbbb1"), "api", "default", StateNotReady)
	addPod(t, m, pad("bbbb2"), "api", "default", StateReady)
	// Two stopped pods of one name: ambiguous.
	addPod(t, m, pad("cccc1"), "old", "default", StateNotReady)
	addPod(t, m, pad("cccc2"), "old", "other", StateNotReady)
	for _, tt := range []struct {
		ref     string
		wantID  string
		wantErr error
	}{
		{pad("aaaa1"), pad("aaaa1"), nil},
		{"aaaa2", pad("aaaa2"), nil},
		{"web", pad("aaaa1"), nil},
		{"prod/db", pad("aaaa2"), nil},
		{"db_prod_uid-aaaa_0", pad("aaaa2"), nil},
		{"api", pad("bbbb2"), nil},
		{"other/old", pad("cccc2"), nil},
		{"old", "", errdefs.ErrInvalidArgument},
		{"aaaa", "", errdefs.ErrInvalidArgument}, // prefix of two IDs
		{"nope", "", errdefs.ErrNotFound},
		{"", "", errdefs.ErrInvalidArgument},
	} {
		t.Run(tt.ref, func(t *testing.T) {
			p, err := m.FindPod(tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v (%s), want %v", err, p.ID, tt.wantErr)
				}
				return
			}
			if err != nil || p.ID != tt.wantID {
				t.Fatalf("got %s, %v; want %s", p.ID, err, tt.wantID)
			}
		})
	}
	if _, err := m.FindPod("nope"); err == nil || !strings.Contains(err.Error(), `ID prefix or name "nope"`) {
		t.Fatalf("unknown pod error does not say what was looked for: %v", err)
	}
}

// fakeShellAgent plays an agent running one guest shell: it ends when its
// stdin closes (a script was piped in) or it is killed.
type fakeShellAgent struct {
	agentapi.AgentClient
	execErr error
	output  string
	code    int32

	mu      sync.Mutex
	req     *agentapi.ExecProcessRequest
	stdin   strings.Builder
	resizes []string
	signals []uint32
	ended   chan struct{}
	endOnce sync.Once
}

func newFakeShellAgent() *fakeShellAgent { return &fakeShellAgent{ended: make(chan struct{})} }

func (a *fakeShellAgent) end() { a.endOnce.Do(func() { close(a.ended) }) }

func (a *fakeShellAgent) ExecProcess(_ context.Context, req *agentapi.ExecProcessRequest) (*emptypb.Empty, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.req = req
	return &emptypb.Empty{}, a.execErr
}

func (a *fakeShellAgent) check(cid, execID string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.req == nil || cid != "" || execID != a.req.ExecId {
		return status.Errorf(codes.NotFound, "no process %q/%q", cid, execID)
	}
	return nil
}

func (a *fakeShellAgent) WriteStdin(_ context.Context, req *agentapi.WriteStdinRequest) (*agentapi.WriteStdinResponse, error) {
	if err := a.check(req.ContainerId, req.ExecId); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stdin.Write(req.Data)
	return &agentapi.WriteStdinResponse{Written: uint32(len(req.Data))}, nil
}

func (a *fakeShellAgent) CloseStdin(_ context.Context, req *agentapi.ProcessRequest) (*emptypb.Empty, error) {
	if err := a.check(req.ContainerId, req.ExecId); err != nil {
		return nil, err
	}
	a.end()
	return &emptypb.Empty{}, nil
}

func (a *fakeShellAgent) ResizeTty(_ context.Context, req *agentapi.ResizeTtyRequest) (*emptypb.Empty, error) {
	if err := a.check(req.ContainerId, req.ExecId); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.resizes = append(a.resizes, fmt.Sprintf("%dx%d", req.Rows, req.Columns))
	return &emptypb.Empty{}, nil
}

func (a *fakeShellAgent) SignalProcess(_ context.Context, req *agentapi.SignalProcessRequest) (*emptypb.Empty, error) {
	if err := a.check(req.ContainerId, req.ExecId); err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.signals = append(a.signals, req.Signal)
	a.mu.Unlock()
	a.end()
	return &emptypb.Empty{}, nil
}

func (a *fakeShellAgent) WaitProcess(ctx context.Context, req *agentapi.ProcessRequest) (*agentapi.WaitProcessResponse, error) {
	if err := a.check(req.ContainerId, req.ExecId); err != nil {
		return nil, err
	}
	select {
	case <-a.ended:
		return &agentapi.WaitProcessResponse{ExitCode: a.code}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (a *fakeShellAgent) ReadOutput(_ context.Context, req *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	if err := a.check(req.ContainerId, req.ExecId); err != nil {
		return nil, err
	}
	data := a.output
	if req.Stream == agentapi.ReadOutputRequest_STDERR {
		data = ""
	}
	return &fakeOutput{data: data, ended: a.ended}, nil
}

// fakeOutput sends its data, then EOF once the process ended.
type fakeOutput struct {
	ttrpc.ClientStream
	data  string
	sent  bool
	ended <-chan struct{}
}

func (o *fakeOutput) Recv() (*agentapi.OutputChunk, error) {
	if !o.sent && o.data != "" {
		o.sent = true
		return &agentapi.OutputChunk{Data: []byte(o.data)}, nil
	}
	<-o.ended
	return nil, io.EOF
}

type nopCloser struct{ strings.Builder }

func (*nopCloser) Close() error { return nil }

func TestDebugConsole(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	id := pad("dddd")
	addPod(t, m, id, "web", "default", StateReady)
	agent := newFakeShellAgent()
	agent.output, agent.code = "hello-from-vm\n", 3
	m.live[id] = &podRuntime{agent: agent}

	var stdout nopCloser
	resize := make(chan TermSize, 1)
	resize <- TermSize{Width: 132, Height: 50}
	opts := ShellOptions{Term: "xterm-256color", TTY: true, Size: TermSize{Width: 80, Height: 24}}
	code, err := m.DebugConsole(context.Background(), id, opts, strings.NewReader("echo hello-from-vm; exit 3\n"), &stdout, nil, resize)
	if err != nil || code != 3 {
		t.Fatalf("DebugConsole = %d, %v; want 3", code, err)
	}
	if stdout.String() != "hello-from-vm\n" || agent.stdin.String() != "echo hello-from-vm; exit 3\n" {
		t.Fatalf("stdout %q, the shell read %q", stdout.String(), agent.stdin.String())
	}
	req := agent.req
	if !req.GuestRoot || req.ContainerId != "" || !req.Tty || !req.Stdin || !strings.HasPrefix(req.ExecId, "console-") {
		t.Fatalf("exec request %+v", req)
	}
	var sp specs.Process
	if err := json.Unmarshal(req.Process, &sp); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sp.Args, []string{"/bin/sh"}) || sp.Cwd != "/" || sp.User.UID != 0 || sp.User.GID != 0 ||
		!slices.Contains(sp.Env, "TERM=xterm-256color") || !slices.Contains(sp.Env, "HOME=/root") ||
		sp.ConsoleSize == nil || sp.ConsoleSize.Width != 80 || sp.ConsoleSize.Height != 24 {
		t.Fatalf("shell process %+v", sp)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		agent.mu.Lock()
		got := slices.Clone(agent.resizes)
		agent.mu.Unlock()
		if slices.Equal(got, []string{"50x132"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resizes %v, want [50x132]", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDebugConsoleCallerLeaves: the shell dies with the session.
func TestDebugConsoleCallerLeaves(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	id := pad("eeee")
	addPod(t, m, id, "web", "default", StateReady)
	agent := newFakeShellAgent()
	m.live[id] = &podRuntime{agent: agent}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stdin, typing := io.Pipe() // an operator who never types
	defer typing.Close()
	if _, err := m.DebugConsole(ctx, id, ShellOptions{}, stdin, &nopCloser{}, &nopCloser{}, nil); err == nil {
		t.Fatal("DebugConsole outlived its caller without an error")
	}
	if agent.mu.Lock(); !slices.Equal(agent.signals, []uint32{9}) {
		t.Fatalf("signals %v, want [9] (SIGKILL)", agent.signals)
	}
	agent.mu.Unlock()
}

func TestDebugConsoleRefuses(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	addPod(t, m, pad("f1"), "stopped", "default", StateNotReady)
	addPod(t, m, pad("f2"), "orphan", "default", StateReady) // record says READY, no VM held
	addPod(t, m, pad("f3"), "oldguest", "default", StateReady)
	addPod(t, m, pad("f4"), "noshell", "default", StateReady)
	old := newFakeShellAgent()
	// What the pod's agent client (agentclient.GuestErrors) makes of the agent's answers.
	old.execErr = &agentclient.GuestError{Code: codes.NotFound, Message: `container "" not found`}
	m.live[pad("f3")] = &podRuntime{agent: old}
	noShell := newFakeShellAgent()
	noShell.execErr = &agentclient.GuestError{Code: codes.FailedPrecondition, Message: "/bin/sh: no such file: the guest has no such program"}
	m.live[pad("f4")] = &podRuntime{agent: noShell}
	for _, tt := range []struct {
		id, want string
		wantErr  error
	}{
		{pad("f1"), "NOTREADY", errdefs.ErrFailedPrecondition},
		{pad("f2"), "not running", errdefs.ErrFailedPrecondition},
		{pad("f3"), "rebuild the guest", errdefs.ErrFailedPrecondition},
		{pad("f4"), "/bin/sh", errdefs.ErrFailedPrecondition},
		{pad("f9"), "", errdefs.ErrNotFound},
	} {
		t.Run(tt.id[:2], func(t *testing.T) {
			_, err := m.DebugConsole(context.Background(), tt.id, ShellOptions{}, nil, &nopCloser{}, &nopCloser{}, nil)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %v with %q", err, tt.wantErr, tt.want)
			}
		})
	}
}
