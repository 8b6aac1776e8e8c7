package guest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const (
	debBody = "fake deb"
	// sha256 of debBody.
	debSum = "5b6105597f4b0e616c5e60d58fa09ab28e2dc04eb884b831ce29e84f774be7ef"
)

// fakeApt answers apt-cache show from a table, counts apt-get update and
// "downloads" by writing debBody into the download directory.
type fakeApt struct {
	show     map[string]string // package -> apt-cache show output
	afterUpd map[string]string // entries that appear after apt-get update
	calls    []string
	body     string
}

func (f *fakeApt) Output(_ context.Context, dir, name string, args ...string) ([]byte, error) {
	call := name + " " + strings.Join(args, " ")
	f.calls = append(f.calls, call)
	switch {
	case name == "apt-cache":
		if out, ok := f.show[args[len(args)-1]]; ok {
			return []byte(out), nil
		}
		return nil, errors.New("E: No packages found")
	case name == "apt-get" && args[0] == "update":
		for k, v := range f.afterUpd {
			f.show[k] = v
		}
		return nil, nil
	case name == "apt-get" && args[0] == "download":
		pkg, ver, _ := strings.Cut(args[len(args)-1], "=")
		file := filepath.Join(dir, pkg+"_"+strings.ReplaceAll(ver, ":", "%3a")+"_amd64.deb")
		return nil, os.WriteFile(file, []byte(f.body), 0o644)
	}
	return nil, errors.New("unexpected command " + call)
}

func stanza(pkg, ver, depends, sum string) string {
	return "Package: " + pkg + "\nVersion: " + ver + "\nArchitecture: amd64\nDepends: " + depends +
		"\nDescription: x\n continued line\nSHA256: " + sum + "\n\n"
}

func TestDebianFetch(t *testing.T) {
	meta := stanza("linux-image-cloud-amd64", "6.1.192-2", "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)", "aaaa")
	real := stanza("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool", debSum)
	tests := []struct {
		name      string
		show      map[string]string
		afterUpd  map[string]string
		cached    string // body of a .deb already in the cache
		body      string
		wantCalls []string
		wantErr   string
	}{
		{
			name: "metapackage resolved and downloaded",
			show: map[string]string{"linux-image-cloud-amd64": meta, "linux-image-6.1.0-56-cloud-amd64": real},
			body: debBody,
			wantCalls: []string{
				"apt-cache show --no-all-versions linux-image-cloud-amd64",
				"apt-cache show --no-all-versions linux-image-6.1.0-56-cloud-amd64",
				"apt-get download -q -o APT::Sandbox::User=root linux-image-6.1.0-56-cloud-amd64=6.1.192-2",
			},
		},
		{
			name:   "cache hit downloads nothing",
			show:   map[string]string{"linux-image-cloud-amd64": meta, "linux-image-6.1.0-56-cloud-amd64": real},
			cached: debBody,
			wantCalls: []string{
				"apt-cache show --no-all-versions linux-image-cloud-amd64",
				"apt-cache show --no-all-versions linux-image-6.1.0-56-cloud-amd64",
			},
		},
		{
			name:   "stale cache file is replaced",
			show:   map[string]string{"linux-image-cloud-amd64": meta, "linux-image-6.1.0-56-cloud-amd64": real},
			cached: "truncated",
			body:   debBody,
			wantCalls: []string{
				"apt-cache show --no-all-versions linux-image-cloud-amd64",
				"apt-cache show --no-all-versions linux-image-6.1.0-56-cloud-amd64",
				"apt-get download -q -o APT::Sandbox::User=root linux-image-6.1.0-56-cloud-amd64=6.1.192-2",
			},
		},
		{
			name:     "unknown package triggers one update",
			show:     map[string]string{},
			afterUpd: map[string]string{"linux-image-cloud-amd64": meta, "linux-image-6.1.0-56-cloud-amd64": real},
			body:     debBody,
			wantCalls: []string{
				"apt-cache show --no-all-versions linux-image-cloud-amd64",
				"apt-get update -q",
				"apt-cache show --no-all-versions linux-image-cloud-amd64",
				"apt-cache show --no-all-versions linux-image-6.1.0-56-cloud-amd64",
				"apt-get download -q -o APT::Sandbox::User=root linux-image-6.1.0-56-cloud-amd64=6.1.192-2",
			},
		},
		{
			name:    "still unknown after update",
			show:    map[string]string{},
			wantErr: "No packages found",
		},
		{
			name:    "checksum mismatch",
			show:    map[string]string{"linux-image-cloud-amd64": meta, "linux-image-6.1.0-56-cloud-amd64": real},
			body:    "tampered",
			wantErr: "apt index says " + debSum,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := t.TempDir()
			want := filepath.Join(cache, "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb")
			if tt.cached != "" {
				if err := os.WriteFile(want, []byte(tt.cached), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			apt := &fakeApt{show: tt.show, afterUpd: tt.afterUpd, body: tt.body}
			d := &Debian{CacheDir: cache, Run: apt}
			pkg, deb, err := d.Fetch(context.Background())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if deb != want || pkg != (Package{Name: "linux-image-6.1.0-56-cloud-amd64", Version: "6.1.192-2", SHA256: debSum}) {
				t.Fatalf("Fetch = %+v, %s", pkg, deb)
			}
			if b, _ := os.ReadFile(deb); string(b) != debBody {
				t.Fatalf("cached .deb holds %q", b)
			}
			if !reflect.DeepEqual(apt.calls, tt.wantCalls) {
				t.Fatalf("calls:\n%s\nwant\n%s", strings.Join(apt.calls, "\n"), strings.Join(tt.wantCalls, "\n"))
			}
			if left, _ := filepath.Glob(filepath.Join(cache, ".download-*")); len(left) != 0 {
				t.Fatalf("download dirs left behind: %v", left)
			}
		})
	}
}

func TestKernelDep(t *testing.T) {
	for in, want := range map[string]string{
		"linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)":              "linux-image-6.1.0-56-cloud-amd64",
		"kmod, linux-base (>= 4.3~)":                                  "",
		"linux-image-6.1.0-1-amd64:amd64 | linux-image-6.1.0-2-amd64": "linux-image-6.1.0-1-amd64",
		"": "",
	} {
		if got := kernelDep(in); got != want {
			t.Errorf("kernelDep(%q) = %q, want %q", in, got, want)
		}
	}
}
