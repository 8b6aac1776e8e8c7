package clh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/vm"
)

// redialDelay is the pause between attempts while nothing listens yet.
const redialDelay = 20 * time.Millisecond

// errNotListening: CH closed the connection without "OK": no guest listener
// on the port yet.
var errNotListening = errors.New("nothing listens on the port yet")

// dialHybridVsock connects to a guest vsock port through CH's unix socket:
// "CONNECT <port>\n" answered by "OK <host port>\n". Until the guest
// listens (booting) CH closes the connection, and the socket may not exist
// yet, so it redials until ctx ends or exited is closed.
func dialHybridVsock(ctx context.Context, path string, port uint32, exited <-chan struct{}) (net.Conn, error) {
	for {
		conn, err := hybridConnect(ctx, path, port)
		if err == nil {
			return conn, nil
		}
		if !retryable(err) {
			return nil, fmt.Errorf("hybrid vsock %s port %d: %w", path, port, err)
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("hybrid vsock %s port %d: %w", path, port, vm.ErrNotRunning)
		case <-ctx.Done():
			return nil, fmt.Errorf("hybrid vsock %s port %d: %w (last attempt: %v)", path, port, ctx.Err(), err)
		case <-time.After(redialDelay):
		}
	}
}

// retryable: refused, missing socket and closing without OK all mean "not
// yet"; a garbled answer or our own context ending do not.
func retryable(err error) bool {
	var pe *protocolError
	return !errors.As(err, &pe) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

type protocolError struct{ line string }

func (e *protocolError) Error() string { return fmt.Sprintf("unexpected answer %q", e.line) }

func hybridConnect(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	c, err := handshake(conn, port)
	if !stop() {
		// ctx ended: the deadline is (being) set, the conn is unusable.
		conn.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func handshake(conn net.Conn, port uint32) (net.Conn, error) {
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errNotListening
		}
		return nil, err
	}
	if !strings.HasPrefix(line, "OK ") {
		return nil, &protocolError{line: strings.TrimSpace(line)}
	}
	// Whatever the guest sent right after OK is already in r.
	return &bufferedConn{Conn: conn, r: r}, nil
}

// bufferedConn reads through the reader that parsed the handshake, so bytes
// that arrived with the OK line are not lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
