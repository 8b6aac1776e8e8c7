package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// PortForward relays one connection to a port on the guest's loopback, which
// the pod's containers share: this is "inside the pod" for kubectl port-forward.
func (s *Server) PortForward(ctx context.Context, stream agentapi.Agent_PortForwardServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	port := first.GetPort()
	if port == 0 || port > 65535 {
		return status.Errorf(codes.InvalidArgument, "port %d", port)
	}
	conn, err := dialLoopback(ctx, strconv.Itoa(int(port)))
	if err != nil {
		return status.Errorf(codes.Unavailable, "connect to port %d in the pod: %v", port, err)
	}
	defer conn.Close()
	if len(first.GetData()) > 0 {
		if _, err := conn.Write(first.GetData()); err != nil {
			return err
		}
	}
	// Host → pod: until the host closes its side.
	go func() {
		for {
			chunk, err := stream.Recv()
			if err != nil {
				if tcp, ok := conn.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
					_ = tcp.CloseWrite()
				} else {
					conn.Close()
				}
				return
			}
			if _, err := conn.Write(chunk.GetData()); err != nil {
				return
			}
		}
	}()
	// Pod → host: until the server in the pod closes.
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if serr := stream.Send(&agentapi.PortForwardChunk{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
				return serr
			}
		}
		if err != nil {
			return nil
		}
	}
}

// dialLoopback tries IPv4 then IPv6 loopback, as servers bind either.
func dialLoopback(ctx context.Context, port string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", port))
	if err == nil {
		return conn, nil
	}
	if conn6, err6 := d.DialContext(ctx, "tcp6", net.JoinHostPort("::1", port)); err6 == nil {
		return conn6, nil
	}
	return nil, err
}
