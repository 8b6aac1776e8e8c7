package hostcheck

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm/guest"
	"github.com/cocoon-runtime/cocoon/vm/guest/guesttest"
)

func TestGuestChecks(t *testing.T) {
	for _, tt := range []struct {
		name    string
		config  func(dir string) string
		breaks  func(t *testing.T, rt config.Runtime)
		want    []Status // per guest dir, sorted by dir
		detail  string
		fix     string
		resultN int // which result detail and fix are checked on
	}{
		{name: "installed", want: []Status{OK}, detail: "kernel test, agent v9.9.9 (handlers cocoon, cocoon-clh)"},
		{name: "missing guest of the default handler fails", breaks: func(t *testing.T, rt config.Runtime) {
			os.RemoveAll(rt.GuestDir)
		}, want: []Status{Fail}, detail: "no guest installed", fix: "cocoon guest build --out "},
		{name: "initramfs not matching the manifest fails", breaks: func(t *testing.T, rt config.Runtime) {
			writeFile(t, filepath.Join(rt.GuestDir, guest.InitramfsFile), "truncated")
		}, want: []Status{Fail}, detail: "manifest says", fix: "cocoon guest build"},
		{name: "missing guest of another handler warns", config: func(dir string) string {
			return "[runtime.handlers.cocoon-clh]\nguest_dir = \"" + dir + "/other\"\n"
		}, want: []Status{Warn, OK}, detail: "/other: guest: no guest installed", fix: "cocoon guest build --out ", resultN: 0},
		{name: "a guest dir no handler uses", config: func(dir string) string {
			return "[runtime.handlers.cocoon]\nguest_dir = \"" + dir + "/a\"\n[runtime.handlers.cocoon-clh]\nguest_dir = \"" + dir + "/a\"\n"
		}, breaks: func(t *testing.T, rt config.Runtime) {
			guesttest.Install(t, rt.Handlers["cocoon"].GuestDir, "v2")
		}, want: []Status{OK, OK}, detail: "(runtime.guest_dir, no handler uses it)", resultN: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			extra := ""
			if tt.config != nil {
				extra = tt.config(t.TempDir())
			}
			rt := testConfig(t, extra).Config.Runtime
			if tt.breaks != nil {
				tt.breaks(t, rt)
			}
			results := checkGuests(rt)
			if len(results) != len(tt.want) {
				t.Fatalf("want %d results, got %+v", len(tt.want), results)
			}
			for i, s := range tt.want {
				if results[i].Status != s {
					t.Fatalf("result %d: %+v, want %s", i, results[i], s)
				}
			}
			r := results[tt.resultN]
			wantResult(t, r, r.Status, tt.detail, tt.fix)
		})
	}
}

func TestCNICheck(t *testing.T) {
	for _, tt := range []struct {
		name        string
		breaks      func(t *testing.T, c config.CNI)
		status      Status
		detail, fix string
	}{
		{name: "usable conflist", status: OK, detail: `10-test.conflist: network "test", plugins bridge, portmap found in`},
		{name: "no configuration", breaks: func(t *testing.T, c config.CNI) {
			os.RemoveAll(c.ConfDir)
		}, status: Fail, detail: "no usable CNI network configuration", fix: "install a network configuration (.conflist) in "},
		{name: "broken conflist", breaks: func(t *testing.T, c config.CNI) {
			writeFile(t, filepath.Join(c.ConfDir, "10-test.conflist"), `{"cniVersion": "1.0.0", "plugins": [`)
		}, status: Fail, detail: "10-test.conflist", fix: "/net.d/10-test.conflist"},
		{name: "missing plugin", breaks: func(t *testing.T, c config.CNI) {
			os.Remove(filepath.Join(c.BinDirs[0], "portmap"))
		}, status: Fail, detail: `plugin "portmap" not found`, fix: "install plugins portmap into one of"},
		{name: "a broken file before a good one is skipped", breaks: func(t *testing.T, c config.CNI) {
			writeFile(t, filepath.Join(c.ConfDir, "05-bad.conflist"), "not json")
		}, status: OK, detail: "10-test.conflist"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig(t, "").Config.CNI
			if tt.breaks != nil {
				tt.breaks(t, c)
			}
			wantResult(t, checkCNI(c), tt.status, tt.detail, tt.fix)
		})
	}
}

func TestDirsCheck(t *testing.T) {
	for _, tt := range []struct {
		name        string
		breaks      func(t *testing.T, h *Host, cfg *config.Config)
		status      Status
		detail, fix string
	}{
		{name: "not created yet but creatable", status: OK, detail: "writable: "},
		{name: "a file where a dir belongs", breaks: func(t *testing.T, _ *Host, cfg *config.Config) {
			writeFile(t, cfg.Daemon.StateDir, "")
		}, status: Fail, detail: "is not a directory", fix: "writable directories"},
		{name: "read-only", breaks: func(_ *testing.T, h *Host, cfg *config.Config) {
			h.Access = func(p string, _ uint32) error {
				if p == filepath.Dir(cfg.Daemon.RuntimeDir) {
					return errors.New("read-only file system")
				}
				return nil
			}
		}, status: Fail, detail: "is not writable: read-only file system", fix: "daemon.state_dir"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := fakeHost(t)
			cfg := &testConfig(t, "").Config
			if tt.breaks != nil {
				tt.breaks(t, h, cfg)
			}
			wantResult(t, h.checkDirs(cfg), tt.status, tt.detail, tt.fix)
		})
	}
}
