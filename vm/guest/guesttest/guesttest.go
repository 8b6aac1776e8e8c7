// Package guesttest installs stand-in guests that vm/guest.Locate accepts,
// for tests that need a guest dir but boot nothing.
package guesttest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/vm/guest"
)

// Install writes a kernel, an initramfs and a manifest naming them (kernel
// version "test", the given agent version) into dir, and returns the manifest.
func Install(t testing.TB, dir, agentVersion string) *guest.Manifest {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := func(name string) guest.File {
		data := []byte("stand-in " + name)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		return guest.File{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
	}
	m := &guest.Manifest{
		Schema: guest.ManifestSchema, KernelVersion: "test", AgentVersion: agentVersion,
		Kernel: file(guest.KernelFile), Initramfs: file(guest.InitramfsFile),
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, guest.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	m.Dir = dir
	return m
}
