package agentclient

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// fakeHealth answers Check like an agent whose policy wants token.
type fakeHealth struct{ token string }

func (f fakeHealth) Check(ctx context.Context, _ *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	got, _ := ttrpc.GetMetadataValue(ctx, agentapi.TokenMetadataKey)
	if got != f.token {
		return nil, status.Error(codes.Unauthenticated, "wrong token")
	}
	return &agentapi.CheckResponse{Status: agentapi.CheckResponse_SERVING}, nil
}

func TestWaitSendsTheConnectionsToken(t *testing.T) {
	token := []byte("\x00\xff0123456789abcdef0123456789abcd")
	for _, tc := range []struct {
		name    string
		token   []byte
		wantErr error
	}{
		{name: "right token", token: token},
		{name: "wrong token fails at once", token: []byte("nope"), wantErr: errdefs.ErrUnauthenticated},
		{name: "no token fails at once", wantErr: errdefs.ErrUnauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "a.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv, _ := ttrpc.NewServer()
			agentapi.RegisterHealthService(srv, fakeHealth{token: hex.EncodeToString(token)})
			go func() { _ = srv.Serve(context.Background(), l) }() // ends with srv.Close
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			c, err := Wait(ctx, func(ctx context.Context) (net.Conn, error) {
				conn, err := net.Dial("unix", sock)
				if err != nil || tc.token == nil {
					return conn, err
				}
				return &TokenConn{Conn: conn, Token: tc.token}, nil
			})
			if c != nil {
				c.Close()
			}
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("Wait: %v, want %v", err, tc.wantErr)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("took %v: a refused token should fail at once", time.Since(start))
			}
		})
	}
}
