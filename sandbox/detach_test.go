package sandbox

import (
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/agentclient"
)

func TestCloseWriteHalfClosesAgentConnections(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if !closeWrite(&agentclient.TokenConn{Conn: client, Token: []byte("t")}) {
		t.Fatal("a unix connection behind a token was not half-closed")
	}
	// The agent sees the end of the requests...
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("agent read: %v, want EOF", err)
	}
	// ...and what it still writes reaches cocoond.
	if _, err := server.Write([]byte("last line\n")); err != nil {
		t.Fatal(err)
	}
	server.Close()
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "last line\n" {
		t.Fatalf("cocoond read %q, %v", got, err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if closeWrite(a) {
		t.Fatal("a connection without half-close reported one")
	}
}
