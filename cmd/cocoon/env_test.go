package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/hostcheck"
)

// TestEnvFormats: `cocoon env` prints the configuration config.Load gives,
// with its sources, in TOML and JSON that decode strictly.
func TestEnvFormats(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cocoon.toml")
	if err := os.WriteFile(path, []byte("[daemon]\nruntime_dir = \"/run/elsewhere\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dropIn := filepath.Join(dir, "config.d", "50-size.toml")
	if err := os.MkdirAll(filepath.Dir(dropIn), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dropIn, []byte("[runtime.handlers.cocoon]\nmemory_mib = 512\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	loaded, err := config.Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		format string
		decode func([]byte, *hostcheck.Env) error
	}{
		{"toml", func(b []byte, e *hostcheck.Env) error {
			return toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().Decode(e)
		}},
		{"json", func(b []byte, e *hostcheck.Env) error {
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			return dec.Decode(e)
		}},
	} {
		t.Run(tt.format, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := runEnv([]string{"--config", path, "--format", tt.format}, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			var env hostcheck.Env
			if err := tt.decode(stdout.Bytes(), &env); err != nil {
				t.Fatalf("%v in\n%s", err, stdout.String())
			}
			if strings.Join(env.Files, ",") != strings.Join([]string{config.EmbeddedDefaults, path, dropIn}, ",") {
				t.Fatalf("files %v", env.Files)
			}
			c := env.Config
			if c.Daemon.RuntimeDir != "/run/elsewhere" || c.Runtime.Handlers["cocoon"].MemoryMiB != 512 ||
				c.Runtime.Handlers["cocoon-clh"].VMM != "clh" || c.Runtime.Handlers["cocoon"].BootTimeout != loaded.Config.Runtime.Handlers["cocoon"].BootTimeout {
				t.Fatalf("config %+v", c)
			}
			if env.Paths.AdminSocket != "/run/elsewhere/admin.sock" || env.Paths.VMDir != "/run/elsewhere/vm" {
				t.Fatalf("paths %+v", env.Paths)
			}
			if env.Versions.Cocoon == "" || env.Versions.QEMU == "" || env.Versions.CloudHypervisor == "" || len(env.Versions.Guests) != 1 {
				t.Fatalf("versions %+v", env.Versions)
			}
		})
	}
}

func TestEnvErrors(t *testing.T) {
	testExits(t, runEnv, []exitCase{
		{"bad format", []string{"--format", "yaml"}, 2, "--format must be toml or json"},
		{"missing explicit config", []string{"--config", "/nonexistent/cocoon.toml"}, 1, "no such file"},
		{"stray argument", []string{"x"}, 2, `unexpected argument "x"`},
	})
}
