package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
)

// TermSize is a terminal's size in characters.
type TermSize struct{ Width, Height uint16 }

// Exec runs cmd in a container with the caller's stdio (a terminal when tty)
// and returns its exit code when it ends.
func (m *Manager) Exec(ctx context.Context, id string, cmd []string, stdin io.Reader, stdout, stderr io.WriteCloser, tty bool, resize <-chan TermSize) (int32, error) {
	c, rt, base, err := m.execTarget(id)
	if err != nil {
		return 0, err
	}
	if len(cmd) == 0 {
		return 0, fmt.Errorf("%w: empty command", errdefs.ErrInvalidArgument)
	}
	proc, _ := json.Marshal(ocispec.ExecProcess(base, cmd, tty))
	req := &agentapi.ExecProcessRequest{ContainerId: c.ID, ExecId: newID()[:16], Process: proc, Tty: tty, Stdin: stdin != nil}
	if _, err := rt.agent.ExecProcess(ctx, req); err != nil {
		return 0, fmt.Errorf("agent ExecProcess: %w", err)
	}
	return m.streamProcess(ctx, rt, req, stdin, stdout, stderr, resize)
}

// execDrainTimeout bounds the wait for an exec's output once the process has
// exited (containerd's drain_exec_sync_io_timeout): a job it left running,
// such as `sh -c 'sleep 1d &'`, keeps stdout open and must not hold the call.
const execDrainTimeout = 2 * time.Second

// streamProcess connects a started exec to the caller's stdio and returns its
// exit code once it ended and its output drained (at most execDrainTimeout
// after the exit). A caller that goes away takes the process with it (as
// containerd does for an abandoned exec). Nothing it starts outlives it: the
// output streams, stdin and resizes run on a context cancelled on return.
func (m *Manager) streamProcess(ctx context.Context, rt *podRuntime, req *agentapi.ExecProcessRequest, stdin io.Reader, stdout, stderr io.Writer, resize <-chan TermSize) (int32, error) {
	cid, execID := req.GetContainerId(), req.GetExecId()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(rt.context(), cancel)()
	drained := pipeOutputs(sctx, rt.agent, cid, execID, stdout, stderr, req.GetTty())
	go feedStdin(sctx, rt, cid, execID, stdin, true)
	go forwardResize(sctx, rt.agent, cid, execID, resize)
	res, err := rt.agent.WaitProcess(sctx, &agentapi.ProcessRequest{ContainerId: cid, ExecId: execID})
	if err != nil {
		// The caller left, its deadline passed (which the agent may report
		// a hair before the local timer fires) or the pod ended: the
		// process goes with the session.
		endAbandoned(rt, cid, execID)
		return 0, err
	}
	select {
	case <-drained:
	case <-ctx.Done():
	case <-time.After(execDrainTimeout):
		m.opts.Log.WithField("container", cid).WithField("exec", execID).
			Warnf("exec output still open %v after the process exited (a job it left running?): not waiting for it", execDrainTimeout)
	}
	return res.GetExitCode(), nil
}

// endAbandoned kills a process whose caller went away and waits for it, so
// neither it nor the agent's record of it outlives the session.
func endAbandoned(rt *podRuntime, cid, execID string) {
	ctx, cancel := rt.shortCall(context.Background())
	defer cancel()
	_, _ = rt.agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: cid, ExecId: execID, Signal: uint32(unix.SIGKILL)})
	_, _ = rt.agent.WaitProcess(ctx, &agentapi.ProcessRequest{ContainerId: cid, ExecId: execID})
}

// pipeOutputs copies an exec's output streams to the writers (nil discards)
// until EOF or ctx ends; the returned channel closes when both ended. It
// reads whatever the writers do with the data: a stream left unread would
// stall the agent connection (ttRPC has one receive loop per connection).
func pipeOutputs(ctx context.Context, a agentapi.AgentClient, cid, execID string, stdout, stderr io.Writer, tty bool) <-chan struct{} {
	type target struct {
		which agentapi.ReadOutputRequest_Stream
		w     io.Writer
	}
	targets := []target{{agentapi.ReadOutputRequest_STDOUT, stdout}}
	if !tty {
		targets = append(targets, target{agentapi.ReadOutputRequest_STDERR, stderr})
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() {
			stream, err := a.ReadOutput(ctx, &agentapi.ReadOutputRequest{ContainerId: cid, ExecId: execID, Stream: t.which})
			if err != nil {
				return
			}
			for {
				chunk, err := stream.Recv()
				if err != nil {
					return
				}
				if t.w != nil {
					_, _ = t.w.Write(chunk.GetData())
				}
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	return done
}

// feedStdin copies the caller's stdin to the process until EOF or ctx ends;
// EOF closes the process's stdin when closeOnEOF (exec, or attach with
// stdin_once).
func feedStdin(ctx context.Context, rt *podRuntime, cid, execID string, in io.Reader, closeOnEOF bool) {
	if in == nil {
		return
	}
	err := sendChunks(in, func(data []byte) error {
		// No per-call deadline: a process that reads its stdin slowly
		// holds the write, and the session's end ends it.
		_, err := rt.agent.WriteStdin(ctx, &agentapi.WriteStdinRequest{ContainerId: cid, ExecId: execID, Data: data})
		return err
	})
	if err == nil && closeOnEOF {
		cctx, cancel := rt.shortCall(ctx)
		_, _ = rt.agent.CloseStdin(cctx, &agentapi.ProcessRequest{ContainerId: cid, ExecId: execID})
		cancel()
	}
}

// chunkSize is how much one agent call carries when cocoond streams a
// caller's bytes (stdin, a port-forward) into the guest.
const chunkSize = 32 << 10

// sendChunks reads r in chunks of up to chunkSize and hands each to send
// (a copy of its own: send may keep it) until r ends or fails, which is nil
// (the caller's cue to close its side), or send fails, which is send's error.
func sendChunks(r io.Reader, send func([]byte) error) error {
	buf := make([]byte, chunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := send(append([]byte(nil), buf[:n]...)); serr != nil {
				return serr
			}
		}
		if err != nil {
			return nil
		}
	}
}

// Resizes turns a caller's resize events (the CRI streaming library's, the
// admin API's) into TermSizes with conv, until in closes or ctx ends; the
// channel it returns closes then.
func Resizes[T any](ctx context.Context, in <-chan T, conv func(T) TermSize) <-chan TermSize {
	out := make(chan TermSize, 1)
	go func() {
		defer close(out)
		for {
			select {
			case sz, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- conv(sz):
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func forwardResize(ctx context.Context, a agentapi.AgentClient, cid, execID string, resize <-chan TermSize) {
	for {
		select {
		case sz, ok := <-resize:
			if !ok {
				return
			}
			_, _ = a.ResizeTty(ctx, &agentapi.ResizeTtyRequest{ContainerId: cid, ExecId: execID, Rows: uint32(sz.Height), Columns: uint32(sz.Width)})
		case <-ctx.Done():
			return
		}
	}
}

// Attach connects the caller to a running container's stdio until it exits or
// the caller goes away. Output is shared with the log writer.
func (m *Manager) Attach(ctx context.Context, id string, stdin io.Reader, stdout, stderr io.WriteCloser, tty bool, resize <-chan TermSize) error {
	c, rt, out, err := m.runningOutput(id)
	if err != nil {
		return err
	}
	cfg := c.ContainerConfig()
	// stdin and resizes end with the attach, not with the container.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(rt.context(), cancel)()
	subs := []struct {
		stream string
		w      io.Writer
	}{{"stdout", stdout}, {"stderr", stderr}}
	for _, s := range subs {
		if s.w == nil {
			continue
		}
		sub := out.subscribe(s.stream)
		defer sub.cancel()
		go func() {
			for {
				data, ok := sub.next()
				if !ok {
					return
				}
				_, _ = s.w.Write(data)
			}
		}()
	}
	if stdin != nil && cfg.GetStdin() {
		go feedStdin(ctx, rt, c.ID, "", stdin, cfg.GetStdinOnce())
	}
	go forwardResize(ctx, rt.agent, c.ID, "", resize)
	select {
	case <-out.finished():
	case <-ctx.Done():
	}
	return nil
}

// PortForward relays stream to port inside the pod, through the agent.
func (m *Manager) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	p, err := m.Pod(podID)
	if err != nil {
		return err
	}
	rt, err := m.runtime(p.ID)
	if err != nil {
		return err
	}
	defer stream.Close()
	fwd, err := rt.agent.PortForward(ctx)
	if err != nil {
		return err
	}
	if err := fwd.Send(&agentapi.PortForwardChunk{Port: uint32(port)}); err != nil {
		return err
	}
	go func() {
		err := sendChunks(stream, func(data []byte) error { return fwd.Send(&agentapi.PortForwardChunk{Data: data}) })
		if err == nil {
			_ = fwd.CloseSend()
		}
	}()
	for {
		chunk, err := fwd.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("port-forward to %d in pod %s: %w", port, p.ID, err)
		}
		if _, err := stream.Write(chunk.GetData()); err != nil {
			return err
		}
	}
}
