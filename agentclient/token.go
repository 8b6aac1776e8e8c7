package agentclient

import (
	"context"
	"encoding/hex"
	"net"

	"github.com/containerd/ttrpc"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// WithToken sends token, hex-encoded (metadata values are UTF-8
// strings), with every unary call. (ttRPC v1.2 clients send
// no metadata on streams; the agent admits a stream on a connection whose
// earlier call carried the token, and Wait's health check is one.)
func WithToken(token []byte) ttrpc.ClientOpts {
	v := hex.EncodeToString(token)
	return ttrpc.WithChainUnaryClientInterceptor(func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, _ *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		req.Metadata = append(req.Metadata, &ttrpc.KeyValue{Key: agentapi.TokenMetadataKey, Value: v})
		return invoke(ctx, req, resp)
	})
}

// TokenConn is an agent connection that knows the token its agent expects.
// Drivers' DialAgent return one, so every client built on the connection
// (ConnOpts, Wait) authenticates without each caller handling
// the token.
type TokenConn struct {
	net.Conn
	Token []byte
}

// ConnOpts are the client options a connection from DialAgent needs:
// its token, when it has one.
func ConnOpts(conn net.Conn) []ttrpc.ClientOpts {
	if tc, ok := conn.(*TokenConn); ok && len(tc.Token) > 0 {
		return []ttrpc.ClientOpts{WithToken(tc.Token)}
	}
	return nil
}
