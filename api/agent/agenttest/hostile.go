package agenttest

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// Output is how a Hostile agent's process output streams behave.
type Output int

const (
	// OutputFinite sends Bytes bytes per stream, then EOF.
	OutputFinite Output = iota
	// OutputEndless sends until the reader goes away or the agent stops,
	// whether or not the process exited.
	OutputEndless
	// OutputHeldOpen sends Bytes bytes, then keeps the stream open without
	// EOF (a job the process left running holds its stdout: `sleep 1d &`).
	OutputHeldOpen
)

// Hostile is an agent a compromised guest could run: it answers what the host
// asks, but with output without end, streams that never close, huge replies
// or no answer at all. Each process "runs" until Exit: WaitProcess answers
// then, and SignalProcess with SIGKILL ends it early. Only the process, stdio
// and stats calls are served; the rest answer Unimplemented.
type Hostile struct {
	Output Output
	Bytes  int64         // per stream, for OutputFinite and OutputHeldOpen
	Chunk  int           // bytes per message; 32 KiB (the real agent's) when 0
	Exit   time.Duration // how long a process runs; <0: until killed
	// SilentStats makes StatsContainer never answer (until the caller's
	// deadline, or the agent stops).
	SilentStats bool
	// Stats is StatsContainer's answer when not silent.
	Stats *agentapi.ContainerStats

	Sent atomic.Int64 // output bytes sent, all streams
	// Calls counts the calls served, by method name.
	mu    sync.Mutex
	calls map[string]int
	procs map[string]chan struct{} // "<container>/<exec>" → closed when it ended
	stop  chan struct{}
}

// Calls is how often method was called.
func (h *Hostile) Calls(method string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[method]
}

func (h *Hostile) count(method string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.calls == nil {
		h.calls = map[string]int{}
	}
	h.calls[method]++
}

// proc is the channel that closes when the process ends.
func (h *Hostile) proc(cid, execID string) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.procs == nil {
		h.procs = map[string]chan struct{}{}
	}
	key := cid + "/" + execID
	ch, ok := h.procs[key]
	if !ok {
		ch = make(chan struct{})
		h.procs[key] = ch
		if h.Exit >= 0 {
			time.AfterFunc(h.Exit, func() { h.end(key) })
		}
	}
	return ch
}

func (h *Hostile) end(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.procs[key]; ok {
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
}

// ServeAgent serves h as the agent, with a healthy Health service, on a unix
// socket in t's temp dir until t ends, and returns a client of it over real
// ttRPC (so its message limits and stream back-pressure apply).
func ServeAgent(t testing.TB, h *Hostile) agentapi.AgentClient {
	t.Helper()
	h.stop = make(chan struct{})
	sock := Serve(t, h, Healthy{})
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		close(h.stop)
		client.Close()
	})
	return agentapi.NewAgentClient(client)
}

// ExecProcess implements agentapi.AgentService: the process starts.
func (h *Hostile) ExecProcess(_ context.Context, req *agentapi.ExecProcessRequest) (*emptypb.Empty, error) {
	h.count("ExecProcess")
	h.proc(req.GetContainerId(), req.GetExecId())
	return &emptypb.Empty{}, nil
}

// StartContainer implements agentapi.AgentService: the init process starts.
func (h *Hostile) StartContainer(_ context.Context, req *agentapi.ContainerRequest) (*emptypb.Empty, error) {
	h.count("StartContainer")
	h.proc(req.GetContainerId(), "")
	return &emptypb.Empty{}, nil
}

// SignalProcess implements agentapi.AgentService: every signal kills.
func (h *Hostile) SignalProcess(_ context.Context, req *agentapi.SignalProcessRequest) (*emptypb.Empty, error) {
	h.count("SignalProcess")
	h.proc(req.GetContainerId(), req.GetExecId())
	h.end(req.GetContainerId() + "/" + req.GetExecId())
	return &emptypb.Empty{}, nil
}

// WaitProcess implements agentapi.AgentService.
func (h *Hostile) WaitProcess(ctx context.Context, req *agentapi.ProcessRequest) (*agentapi.WaitProcessResponse, error) {
	h.count("WaitProcess")
	select {
	case <-h.proc(req.GetContainerId(), req.GetExecId()):
		return &agentapi.WaitProcessResponse{ExitCode: 0, ExitedAtNs: time.Now().UnixNano()}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-h.stop:
		return nil, status.Error(codes.Unavailable, "agent stopped")
	}
}

// ReadOutput implements agentapi.AgentService with the Output behaviour.
func (h *Hostile) ReadOutput(ctx context.Context, req *agentapi.ReadOutputRequest, srv agentapi.Agent_ReadOutputServer) error {
	h.count("ReadOutput")
	size := h.Chunk
	if size <= 0 {
		size = 32 << 10
	}
	chunk := make([]byte, size)
	for i := range chunk {
		chunk[i] = 'x'
	}
	chunk[len(chunk)-1] = '\n'
	var sent int64
	for h.Output == OutputEndless || sent < h.Bytes {
		n := int64(len(chunk))
		if h.Output != OutputEndless {
			n = min(n, h.Bytes-sent)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-h.stop:
			return nil
		default:
		}
		// Offsets are honest: the output itself is the attack here.
		if err := srv.Send(&agentapi.OutputChunk{Data: chunk[:n], Offset: req.GetOffset() + uint64(sent)}); err != nil {
			return nil
		}
		sent += n
		h.Sent.Add(n)
	}
	if h.Output == OutputHeldOpen {
		select {
		case <-ctx.Done():
		case <-h.stop:
		}
	}
	return nil
}

// StatsContainer implements agentapi.AgentService.
func (h *Hostile) StatsContainer(ctx context.Context, _ *agentapi.ContainerRequest) (*agentapi.ContainerStats, error) {
	h.count("StatsContainer")
	if h.SilentStats {
		select {
		case <-ctx.Done():
		case <-h.stop:
		}
		return nil, status.Error(codes.DeadlineExceeded, "no answer")
	}
	if h.Stats != nil {
		return h.Stats, nil
	}
	return &agentapi.ContainerStats{TimestampNs: time.Now().UnixNano()}, nil
}

func unimplemented(method string) error {
	return status.Errorf(codes.Unimplemented, "hostile agent: %s not served", method)
}

// CreateSandbox implements agentapi.AgentService.
func (h *Hostile) CreateSandbox(context.Context, *agentapi.CreateSandboxRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CreateSandbox")
}

// DestroySandbox implements agentapi.AgentService.
func (h *Hostile) DestroySandbox(context.Context, *agentapi.DestroySandboxRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("DestroySandbox")
}

// OnlineCPUMem implements agentapi.AgentService.
func (h *Hostile) OnlineCPUMem(context.Context, *emptypb.Empty) (*agentapi.GuestDetails, error) {
	return nil, unimplemented("OnlineCPUMem")
}

// CreateContainer implements agentapi.AgentService.
func (h *Hostile) CreateContainer(context.Context, *agentapi.CreateContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CreateContainer")
}

// RemoveContainer implements agentapi.AgentService.
func (h *Hostile) RemoveContainer(context.Context, *agentapi.RemoveContainerRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// UpdateContainer implements agentapi.AgentService.
func (h *Hostile) UpdateContainer(context.Context, *agentapi.UpdateContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("UpdateContainer")
}

// WriteStdin implements agentapi.AgentService: stdin is swallowed.
func (h *Hostile) WriteStdin(_ context.Context, req *agentapi.WriteStdinRequest) (*agentapi.WriteStdinResponse, error) {
	return &agentapi.WriteStdinResponse{Written: uint32(len(req.GetData()))}, nil
}

// CloseStdin implements agentapi.AgentService.
func (h *Hostile) CloseStdin(context.Context, *agentapi.ProcessRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// ResizeTty implements agentapi.AgentService.
func (h *Hostile) ResizeTty(context.Context, *agentapi.ResizeTtyRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// UpdateInterface implements agentapi.AgentService.
func (h *Hostile) UpdateInterface(context.Context, *agentapi.Interface) (*agentapi.Interface, error) {
	return nil, unimplemented("UpdateInterface")
}

// UpdateRoutes implements agentapi.AgentService.
func (h *Hostile) UpdateRoutes(context.Context, *agentapi.Routes) (*agentapi.Routes, error) {
	return nil, unimplemented("UpdateRoutes")
}

// PortForward implements agentapi.AgentService.
func (h *Hostile) PortForward(context.Context, agentapi.Agent_PortForwardServer) error {
	return unimplemented("PortForward")
}
