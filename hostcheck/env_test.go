package hostcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/cocoon-runtime/cocoon/config"
)

func TestDescribe(t *testing.T) {
	h, bins := fakeHost(t)
	delete(bins, "cloud-hypervisor")
	bins["/usr/lib/qemu/virtiofsd"] = fakeBinary{err: errors.New("exit status 1")}
	loaded := testConfig(t, "[runtime.handlers.cocoon-clh]\nguest_dir = \"/nonexistent/guest\"\n")
	env := Describe(context.Background(), h, loaded)

	if want := append([]string{config.EmbeddedDefaults}, loaded.Files...); !reflect.DeepEqual(env.Files, want) {
		t.Fatalf("files %v, want %v", env.Files, want)
	}
	v := env.Versions
	for _, c := range []struct{ what, got, want string }{
		{"cocoond", v.Cocoond, "cocoond v1.0.0 (revision abc) at /opt/cocoon/cocoond"},
		{"qemu", v.QEMU, "QEMU emulator version 7.2.22 at /usr/bin/qemu-system-x86_64"},
		{"cloud hypervisor", v.CloudHypervisor, "not installed"},
		{"virtiofsd", v.Virtiofsd, "unknown (/usr/lib/qemu/virtiofsd --version: exit status 1: )"},
	} {
		if c.got != c.want {
			t.Errorf("%s version %q, want %q", c.what, c.got, c.want)
		}
	}
	if !strings.Contains(v.Cocoon, "(revision ") {
		t.Errorf("cocoon version %q", v.Cocoon)
	}
	rt := loaded.Config.Runtime
	want := []GuestVersion{
		{Dir: "/nonexistent/guest", Handlers: []string{"cocoon-clh"}, Agent: "not installed", Kernel: "not installed"},
		{Dir: rt.GuestDir, Handlers: []string{"cocoon"}, Agent: "v9.9.9", Kernel: "test"},
	}
	if !reflect.DeepEqual(v.Guests, want) {
		t.Fatalf("guests %+v, want %+v", v.Guests, want)
	}
	if env.Paths.AdminSocket != filepath.Join(loaded.Config.Daemon.RuntimeDir, "admin.sock") || env.Paths.Socket != loaded.Config.Daemon.Socket {
		t.Fatalf("paths %+v", env.Paths)
	}
}

// TestEnvRoundTrip: both formats decode back into the same Env, and the
// configuration in it into the config.Config it was made from.
func TestEnvRoundTrip(t *testing.T) {
	h, _ := fakeHost(t)
	loaded := testConfig(t, "[runtime.handlers.big]\nvcpus = 2\nkernel_args = [\"cocoon.log=debug\"]\n")
	env := Describe(context.Background(), h, loaded)
	for _, tt := range []struct {
		format string
		decode func([]byte, any) error
	}{
		{FormatTOML, func(b []byte, v any) error {
			return toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().Decode(v)
		}},
		{FormatJSON, func(b []byte, v any) error {
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			return dec.Decode(v)
		}},
	} {
		t.Run(tt.format, func(t *testing.T) {
			var buf bytes.Buffer
			if err := env.Encode(&buf, tt.format); err != nil {
				t.Fatal(err)
			}
			var back Env
			if err := tt.decode(buf.Bytes(), &back); err != nil {
				t.Fatalf("%v in\n%s", err, buf.String())
			}
			if !reflect.DeepEqual(normalized(back.Config), normalized(loaded.Config)) {
				t.Fatalf("config changed in the round trip:\n got %+v\nwant %+v", back.Config, loaded.Config)
			}
			back.Config = env.Config
			if !reflect.DeepEqual(&back, env) {
				t.Fatalf("env changed in the round trip:\n got %+v\nwant %+v", back, *env)
			}
		})
	}
	if err := env.Encode(&bytes.Buffer{}, "yaml"); err == nil || !strings.Contains(err.Error(), "yaml") {
		t.Fatalf("unknown format: %v", err)
	}
}

// normalized copies c with empty kernel args as none: the defaults' "[]"
// and an absent key mean the same, and the formats keep them apart differently.
func normalized(c config.Config) config.Config {
	handlers := map[string]config.Handler{}
	for name, h := range c.Runtime.Handlers {
		if len(h.KernelArgs) == 0 {
			h.KernelArgs = nil
		}
		handlers[name] = h
	}
	c.Runtime.Handlers = handlers
	return c
}
