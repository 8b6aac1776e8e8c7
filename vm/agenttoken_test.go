package vm

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

func TestAgentTokenFile(t *testing.T) {
	dir := t.TempDir()
	path, tok, err := NewAgentToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || len(tok) != agentapi.TokenSize {
		t.Fatalf("token file %v (%v), %d bytes", fi, err, len(tok))
	}
	back, err := ReadAgentToken(dir)
	if err != nil || string(back) != string(tok) {
		t.Fatalf("read back %x, %v; want %x", back, err, tok)
	}
	// Never over an existing file (nor through a symlink planted there).
	if _, _, err := NewAgentToken(dir); err == nil {
		t.Fatal("a second token overwrote the first")
	}
	other := t.TempDir()
	if err := os.Symlink(filepath.Join(other, "target"), filepath.Join(other, AgentTokenFile)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := NewAgentToken(other); err == nil {
		t.Fatal("token written through a symlink")
	}
	if _, err := ReadAgentToken(other); err == nil {
		t.Fatal("token read through a symlink")
	}
	short := t.TempDir()
	if err := os.WriteFile(filepath.Join(short, AgentTokenFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAgentToken(short); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("short token: %v", err)
	}
}

// fakeHealth answers Check like an agent whose policy wants token.
type fakeHealth struct{ token string }

func (f fakeHealth) Check(ctx context.Context, _ *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	got, _ := ttrpc.GetMetadataValue(ctx, agentapi.TokenMetadataKey)
	if got != f.token {
		return nil, status.Error(codes.Unauthenticated, "wrong token")
	}
	return &agentapi.CheckResponse{Status: agentapi.CheckResponse_SERVING}, nil
}

func (fakeHealth) Version(context.Context, *agentapi.CheckRequest) (*agentapi.VersionResponse, error) {
	return &agentapi.VersionResponse{}, nil
}

func TestWaitAgentSendsTheConnectionsToken(t *testing.T) {
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
			go srv.Serve(context.Background(), l)
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			c, err := WaitAgent(ctx, func(ctx context.Context) (net.Conn, error) {
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
				t.Fatalf("WaitAgent: %v, want %v", err, tc.wantErr)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("took %v: a refused token should fail at once", time.Since(start))
			}
		})
	}
}
