package config

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds Load a main file and one drop-in. Load must not panic, and
// must either fail or return a config that validates and that, printed with
// Marshal (what `cocoon env` shows), loads back and prints the same.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(""), []byte(""))
	f.Add(defaultsTOML, []byte("[daemon]\nlog_level = \"debug\"\n"))
	f.Add([]byte("[image]\ndriver = \"vfs\"\nmax_parallel_downloads = 3\n"), []byte("[runtime.handlers.fast]\nvcpus = 2\nmemory_mib = 512\n"))
	f.Add([]byte("[runtime]\ndefault_handler = \"x\"\n[runtime.handlers.x]\nvmm = \"clh\"\nboot_timeout = \"1m30s\"\nkernel_args = [\"quiet\"]\n"), []byte{})
	f.Add([]byte("[daemon]\nshutdown_timeout = \"-5s\"\n"), []byte("[cni]\nbin_dirs = []\n"))
	f.Add([]byte("[daemon\nsocket = 1"), []byte("[streaming]\naddress = \"[::1]:0\"\nidle_timeout = \"0s\"\n"))
	f.Add([]byte("[metrics]\naddress = \"127.0.0.1:9090\"\n[debug]\nconsole = true\n"), []byte("unknown = 1\n"))

	// One directory per fuzz worker process, whose iterations run one at a time.
	dir := f.TempDir()
	path := filepath.Join(dir, "cocoon.toml")
	dropInPath := filepath.Join(dir, "config.d", "10-fuzz.toml")
	again := filepath.Join(dir, "printed", "cocoon.toml")
	for _, d := range []string{filepath.Dir(dropInPath), filepath.Dir(again)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			f.Fatal(err)
		}
	}

	f.Fuzz(func(t *testing.T, main, dropIn []byte) {
		if err := os.WriteFile(path, main, 0o644); err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(dropInPath)
		if len(dropIn) > 0 {
			if err := os.WriteFile(dropInPath, dropIn, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		l, err := Load(path, true)
		if err != nil {
			return
		}
		if errs := l.Config.Validate(); len(errs) > 0 {
			t.Fatalf("Load returned a config that does not validate: %v", errs)
		}
		out, err := l.Config.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		if err := os.WriteFile(again, out, 0o644); err != nil {
			t.Fatal(err)
		}
		back, err := Load(again, true)
		if err != nil {
			t.Fatalf("printed config does not load back: %v\n%s", err, out)
		}
		// Printing is the comparison: nil and empty lists print alike.
		out2, err := back.Config.Marshal()
		if err != nil {
			t.Fatalf("marshal again: %v", err)
		}
		if !bytes.Equal(out2, out) {
			t.Fatalf("printed config loads back different:\n%s\nthen\n%s", out, out2)
		}
	})
}
