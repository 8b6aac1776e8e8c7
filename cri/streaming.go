package cri

import (
	"context"
	"errors"
	"io"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// streamer is what the streaming server needs from sandbox/.
type streamer interface {
	Exec(ctx context.Context, id string, cmd []string, stdin io.Reader, stdout, stderr io.WriteCloser, tty bool, resize <-chan sandbox.TermSize) (int32, error)
	Attach(ctx context.Context, id string, stdin io.Reader, stdout, stderr io.WriteCloser, tty bool, resize <-chan sandbox.TermSize) error
	PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error
}

// NewStreamingServer builds the exec/attach/port-forward server (SPDY and
// WebSocket) that Exec, Attach and PortForward return URLs of.
func NewStreamingServer(addr string, idle time.Duration, s streamer) (streaming.Server, error) {
	cfg := streaming.DefaultConfig
	cfg.Addr = addr
	cfg.StreamIdleTimeout = idle
	return streaming.NewServer(cfg, streamRuntime{s})
}

// streamURLs issues the URLs Exec, Attach and PortForward answer with.
type streamURLs interface {
	GetExec(*runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error)
	GetAttach(*runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error)
	GetPortForward(*runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error)
}

var errNonZero = errors.New("command exited with a non-zero code")

// streamRuntime adapts sandbox/ to cri-streaming's Runtime.
type streamRuntime struct{ s streamer }

func (r streamRuntime) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	code, err := r.s.Exec(ctx, id, cmd, in, out, errw, tty, sandbox.Resizes(ctx, resize, termSize))
	if err != nil {
		return err
	}
	if code != 0 {
		// cri-streaming reports the exit code of an ExitError to the client.
		return utilexec.CodeExitError{Err: errNonZero, Code: int(code)}
	}
	return nil
}

func (r streamRuntime) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	return r.s.Attach(ctx, id, in, out, errw, tty, sandbox.Resizes(ctx, resize, termSize))
}

func (r streamRuntime) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	return r.s.PortForward(ctx, podID, port, stream)
}

// termSize is the streaming library's resize event as ours.
func termSize(sz remotecommandserver.TerminalSize) sandbox.TermSize {
	return sandbox.TermSize{Width: sz.Width, Height: sz.Height}
}
