package admin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
)

// DebugConsole asks the cocoond behind socket for a console in req.Pod and
// carries it: stdin goes to the shell (its end becomes the shell's EOF),
// each size on resize follows, output goes to stdout and stderr. It returns
// the shell's exit code; an error means no exit code came (refused, lost).
func DebugConsole(ctx context.Context, socket string, req ConsoleRequest, stdin io.Reader, stdout, stderr io.Writer, resize <-chan Size) (int32, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	defer tr.CloseIdleConnections()
	tty := "0"
	if req.TTY {
		tty = "1"
	}
	q := url.Values{"pod": {req.Pod}, "term": {req.Term}, "tty": {tty},
		"rows": {strconv.Itoa(int(req.Size.Rows))}, "cols": {strconv.Itoa(int(req.Size.Cols))}}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://cocoond"+ConsolePath+"?"+q.Encode(), nil)
	if err != nil {
		return 0, err
	}
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", ConsoleProtocol)
	resp, err := (&http.Client{Transport: tr}).Do(hreq)
	if err != nil {
		return 0, dialError(socket, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, MaxFramePayload))
		if msg := strings.TrimSpace(string(body)); msg != "" {
			return 0, errors.New(msg)
		}
		return 0, fmt.Errorf("cocoond answered %s", resp.Status)
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return 0, errors.New("cocoond switched protocols but the connection is not writable")
	}
	return runSession(ctx, conn, stdin, stdout, stderr, resize)
}

func dialError(socket string, err error) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		// Connected, then cut off: what the socket does to anyone but root.
		return fmt.Errorf("cocoond closed the connection on %s (only root may use the admin socket): %w", socket, err)
	}
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("no admin socket at %s: is cocoond running? (--admin-socket names another)", socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing answers on %s: is cocoond running?", socket)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%s: permission denied: the admin socket is root's", socket)
	}
	return err
}

// runSession is the client end of a console session on conn.
func runSession(ctx context.Context, conn io.ReadWriteCloser, stdin io.Reader, stdout, stderr io.Writer, resize <-chan Size) (int32, error) {
	defer conn.Close()
	// Leaving (a signal, a cancelled context) hangs up: cocoond ends the shell.
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	out := &frameConn{w: conn}
	done := make(chan struct{})
	defer close(done)
	go func() {
		if stdin != nil {
			if _, err := io.Copy(out.stream(FrameStdin), stdin); err != nil {
				return // the connection is gone; the read loop reports it
			}
		}
		_ = out.send(FrameStdinEOF, nil)
	}()
	go func() {
		for {
			select {
			case sz, ok := <-resize:
				if !ok {
					return
				}
				_ = out.send(FrameResize, encodeSize(sz))
			case <-done:
				return
			}
		}
	}()
	in := bufio.NewReader(conn)
	for {
		f, err := ReadFrame(in)
		if err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, fmt.Errorf("connection to cocoond lost before the shell's exit code: %w", err)
		}
		switch f.Type {
		case FrameStdout:
			_, _ = stdout.Write(f.Payload)
		case FrameStderr:
			_, _ = stderr.Write(f.Payload)
		case FrameExit:
			return decodeExit(f.Payload)
		case FrameError:
			return 0, errors.New(string(f.Payload))
		default:
			return 0, fmt.Errorf("cocoond sent an unknown frame type %q", f.Type)
		}
	}
}
