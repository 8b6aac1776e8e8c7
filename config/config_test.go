package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDefaultsAreValid(t *testing.T) {
	c, err := Defaults()
	if err != nil {
		t.Fatal(err)
	}
	if errs := c.Validate(); len(errs) != 0 {
		t.Fatalf("embedded defaults invalid: %v", errs)
	}
	if c.Daemon.Socket != "/run/cocoon/cocoon.sock" || c.Image.Driver != "overlay" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	if c.Image.PullProgressInterval.Std() != 5*time.Second {
		t.Fatalf("pull_progress_interval = %v", c.Image.PullProgressInterval.Std())
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name     string
		main     string // empty: no main file
		dropIns  map[string]string
		required bool
		wantErr  []string // substrings the error must contain
		check    func(t *testing.T, l *Loaded)
	}{
		{
			name: "no file runs on defaults",
			check: func(t *testing.T, l *Loaded) {
				if l.Config.Daemon.LogLevel != "info" || len(l.Files) != 0 {
					t.Fatalf("got %+v files %v", l.Config.Daemon, l.Files)
				}
			},
		},
		{
			name:     "missing explicit file is an error",
			required: true,
			wantErr:  []string{"no such file"},
		},
		{
			name: "debug console is off by default and the admin socket follows runtime_dir",
			main: "[daemon]\nruntime_dir = \"/run/x\"\n",
			check: func(t *testing.T, l *Loaded) {
				if l.Config.Debug.Console || l.Config.Daemon.AdminSocket() != "/run/x/admin.sock" {
					t.Fatalf("debug %+v, admin socket %q", l.Config.Debug, l.Config.Daemon.AdminSocket())
				}
			},
		},
		{
			name: "main file overrides one key, keeps the others",
			main: "[daemon]\nlog_level = \"debug\"\n",
			check: func(t *testing.T, l *Loaded) {
				if l.Config.Daemon.LogLevel != "debug" || l.Config.Daemon.Socket != "/run/cocoon/cocoon.sock" {
					t.Fatalf("got %+v", l.Config.Daemon)
				}
			},
		},
		{
			name:    "drop-ins apply in lexical order after the main file",
			main:    "[image]\ndriver = \"vfs\"\n",
			dropIns: map[string]string{"20-b.toml": "[daemon]\nlog_level = \"warn\"\n", "10-a.toml": "[daemon]\nlog_level = \"error\"\n[cni]\nbin_dirs = [\"/x\"]\n"},
			check: func(t *testing.T, l *Loaded) {
				if l.Config.Daemon.LogLevel != "warn" || l.Config.Image.Driver != "vfs" || l.Config.CNI.BinDirs[0] != "/x" {
					t.Fatalf("got %+v", l.Config)
				}
				if !strings.HasSuffix(l.Origin("daemon.log_level"), "20-b.toml") || l.Origin("daemon.socket") != EmbeddedDefaults {
					t.Fatalf("origins wrong: %q %q", l.Origin("daemon.log_level"), l.Origin("daemon.socket"))
				}
			},
		},
		{
			name:    "invalid value names file and key",
			main:    "[daemon]\nlog_format = \"xml\"\n",
			wantErr: []string{"cocoon.toml", "daemon.log_format", "xml"},
		},
		{
			name:    "invalid value in a drop-in names the drop-in",
			dropIns: map[string]string{"50-img.toml": "[image]\ngraph_root = \"relative/dir\"\n"},
			wantErr: []string{"50-img.toml", "image.graph_root", "absolute"},
		},
		{
			name:    "unknown key is rejected",
			main:    "[image]\ndrvier = \"overlay\"\n",
			wantErr: []string{"cocoon.toml", "unknown key", "image.drvier"},
		},
		{
			name:    "wrong type names the line",
			main:    "[daemon]\nlog_level = 3\n",
			wantErr: []string{"cocoon.toml", "line 2"},
		},
		{
			name:    "bad duration",
			main:    "[daemon]\nshutdown_timeout = \"soon\"\n",
			wantErr: []string{"cocoon.toml", "soon"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "cocoon.toml")
			if tt.main != "" {
				writeFile(t, path, tt.main)
			}
			for name, body := range tt.dropIns {
				writeFile(t, filepath.Join(dir, "config.d", name), body)
			}
			l, err := Load(path, tt.required)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("want error containing %v, got nil", tt.wantErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, l)
		})
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c, err := Defaults()
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "cocoon.toml")
	writeFile(t, path, string(out))
	l, err := Load(path, true)
	if err != nil {
		t.Fatalf("printed config does not load back: %v\n%s", err, out)
	}
	if l.Config.Image.GraphRoot != c.Image.GraphRoot || l.Config.Daemon.ShutdownTimeout != c.Daemon.ShutdownTimeout {
		t.Fatalf("round trip changed values")
	}
}

func TestRuntimeHandlers(t *testing.T) {
	for _, tt := range []struct {
		name    string
		body    string
		wantErr []string
		check   func(t *testing.T, c *Config)
	}{
		{
			name: "defaults: a qemu and a clh handler",
			check: func(t *testing.T, c *Config) {
				h := c.Runtime.Handlers["cocoon"]
				if c.Runtime.DefaultHandler != "cocoon" || h.VMM != "qemu" || h.VCPUs != 1 || h.MemoryMiB != 256 || h.GuestDir != "/var/lib/cocoon/guest" {
					t.Fatalf("%+v", c.Runtime)
				}
				if c.Runtime.Handlers["cocoon-clh"].VMM != "clh" {
					t.Fatal("no clh handler")
				}
			},
		},
		{
			name: "a drop-in setting one key keeps the handler's others",
			body: "[runtime.handlers.cocoon]\nmemory_mib = 512\n",
			check: func(t *testing.T, c *Config) {
				h := c.Runtime.Handlers["cocoon"]
				if h.MemoryMiB != 512 || h.VMM != "qemu" || h.VCPUs != 1 || h.MaxMemoryMiB != 2048 || h.BootTimeout == 0 {
					t.Fatalf("%+v", h)
				}
			},
		},
		{
			name: "a new handler takes the defaults",
			body: "[runtime.handlers.big]\nvcpus = 2\nmemory_mib = 1024\nkernel_args = [\"cocoon.log=debug\"]\n",
			check: func(t *testing.T, c *Config) {
				h := c.Runtime.Handlers["big"]
				if h.VMM != "qemu" || h.VCPUs != 2 || h.MaxVCPUs != 4 || h.MemoryMiB != 1024 || h.MaxMemoryMiB != 2048 || h.KernelArgs[0] != "cocoon.log=debug" {
					t.Fatalf("%+v", h)
				}
			},
		},
		{
			name: "a pool left unset is auto, size 0 turns it off",
			body: "[runtime.handlers.cocoon.pool]\nsize = 0\n[runtime.handlers.big]\nvcpus = 2\n",
			check: func(t *testing.T, c *Config) {
				if n := c.Runtime.Handlers["cocoon"].Pool.Size; n == nil || *n != 0 {
					t.Fatalf("cocoon pool size %v, want 0", n)
				}
				if n := c.Runtime.Handlers["big"].Pool.Size; n == nil || *n != PoolAuto {
					t.Fatalf("big pool size %v, want auto", n)
				}
			},
		},
		{name: "pool too big", body: "[runtime.handlers.x.pool]\nsize = 1000\n", wantErr: []string{"runtime.handlers.x.pool.size"}},
		{name: "pool size below auto", body: "[runtime.handlers.x.pool]\nsize = -2\n", wantErr: []string{"runtime.handlers.x.pool.size"}},
		{name: "unknown default handler", body: "[runtime]\ndefault_handler = \"nope\"\n", wantErr: []string{"runtime.default_handler", "nope"}},
		{name: "bad vmm", body: "[runtime.handlers.x]\nvmm = \"firecracker\"\n", wantErr: []string{"runtime.handlers.x.vmm", "firecracker"}},
		{name: "limit below size", body: "[runtime.handlers.x]\nvcpus = 8\nmax_vcpus = 2\n", wantErr: []string{"runtime.handlers.x.max_vcpus"}},
		{name: "too little memory", body: "[runtime.handlers.x]\nmemory_mib = 64\n", wantErr: []string{"runtime.handlers.x.memory_mib"}},
		{name: "bad handler name", body: "[runtime.handlers.Big_One]\n", wantErr: []string{"runtime.handlers.Big_One", "DNS"}},
		{
			name: "host pods run on the host by default, with a host handler",
			body: "",
			check: func(t *testing.T, c *Config) {
				if c.Runtime.HostNamespacePods != HostPodsHost {
					t.Fatalf("host_namespace_pods = %q", c.Runtime.HostNamespacePods)
				}
				if name, h := c.Runtime.HostHandler(); name != "cocoon-host" || h.Kind != KindHost {
					t.Fatalf("host handler %q %+v", name, h)
				}
				if h := c.Runtime.Handlers["cocoon"]; h.Kind != KindVM {
					t.Fatalf("the default handler is of kind %q", h.Kind)
				}
			},
		},
		{
			name: "without a host handler the policy uses a built-in one",
			body: "[runtime]\nhost_namespace_pods = \"reject\"\n",
			check: func(t *testing.T, c *Config) {
				delete(c.Runtime.Handlers, "cocoon-host")
				if c.Runtime.HostNamespacePods != HostPodsReject {
					t.Fatalf("host_namespace_pods = %q", c.Runtime.HostNamespacePods)
				}
				if name, h := c.Runtime.HostHandler(); name != "" || h.Kind != KindHost || h.BootTimeout == 0 {
					t.Fatalf("host handler %q %+v", name, h)
				}
			},
		},
		{name: "bad host pod policy", body: "[runtime]\nhost_namespace_pods = \"vm\"\n", wantErr: []string{"runtime.host_namespace_pods"}},
		{name: "bad handler kind", body: "[runtime.handlers.x]\nkind = \"container\"\n", wantErr: []string{"runtime.handlers.x.kind"}},
		{name: "pod share without a quota", body: "[runtime]\nshare_size_mib = 0\n", wantErr: []string{"runtime.share_size_mib"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "cocoon.toml")
			if tt.body != "" {
				writeFile(t, path, tt.body)
			}
			l, err := Load(path, false)
			if len(tt.wantErr) > 0 {
				for _, s := range tt.wantErr {
					if err == nil || !strings.Contains(err.Error(), s) {
						t.Fatalf("error %v lacks %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, &l.Config)
		})
	}
}

func TestPoolResolve(t *testing.T) {
	n := func(i int) *int { return &i }
	for _, tt := range []struct {
		name      string
		size      *int
		cpus      int
		availMiB  uint64
		memoryMiB uint64
		want      int
	}{
		{"explicit size wins over a small host", n(3), 1, 100, 256, 3},
		{"off", n(0), 8, 1 << 20, 256, 0},
		{"auto with room", n(PoolAuto), 2, 16 << 10, 256, 2},
		{"unset is auto", nil, 2, 16 << 10, 256, 2},
		{"auto on one CPU", n(PoolAuto), 1, 16 << 10, 256, 0},
		{"auto short of memory", n(PoolAuto), 4, 6143, 256, 0},
		{"auto just enough memory", n(PoolAuto), 4, 6144, 256, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := (Pool{Size: tt.size}).Resolve(tt.cpus, tt.availMiB, tt.memoryMiB); got != tt.want {
				t.Errorf("Resolve = %d, want %d", got, tt.want)
			}
		})
	}
}
