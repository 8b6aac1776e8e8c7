package vm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

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
