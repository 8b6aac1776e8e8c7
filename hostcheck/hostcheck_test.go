package hostcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm/guest/guesttest"
)

// fakeBinary is a program the fake host knows: its --version output, or the
// error running it gives.
type fakeBinary struct {
	version string
	err     error
}

// fakeHost is a healthy machine in temp dirs: root, cgroup v2 with every
// controller, overlay loaded, tun, kvm and vhost-vsock present, every binary
// installed. Tests break one thing at a time.
func fakeHost(t *testing.T) (*Host, map[string]fakeBinary) {
	t.Helper()
	root := t.TempDir()
	cgroup := filepath.Join(root, "cgroup")
	files := map[string]string{
		"proc/filesystems":          "nodev\tsysfs\nnodev\toverlay\n",
		"proc/self/mountinfo":       fmt.Sprintf("25 1 0:22 / /sys rw - sysfs sysfs rw\n41 31 0:38 / %s rw,relatime - cgroup2 cgroup2 rw\n", cgroup),
		"cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma\n",
		"dev/net/tun":               "",
		"dev/kvm":                   "",
		"dev/vhost-vsock":           "",
		"modules/modules.dep":       "kernel/fs/ext4/ext4.ko:\n",
		"modules/modules.builtin":   "kernel/fs/proc.ko\n",
		"systemd/system/.keep":      "",
	}
	for name, body := range files {
		writeFile(t, filepath.Join(root, name), body)
	}
	bins := map[string]fakeBinary{
		"qemu-system-x86_64":      {version: "QEMU emulator version 7.2.22\nCopyright"},
		"cloud-hypervisor":        {version: "cloud-hypervisor v51.0.0"},
		"/usr/lib/qemu/virtiofsd": {version: "virtiofsd version 7.2.22"},
		"/opt/cocoon/cocoond":     {version: "cocoond v1.0.0 (revision abc)"},
		// setpriv's output is that of the confined QEMU it runs.
		"setpriv": {version: "Controller/Bridge/Hub devices:"},
	}
	h := &Host{
		Euid: 0, ProcDir: filepath.Join(root, "proc"), DevDir: filepath.Join(root, "dev"), ModulesDir: filepath.Join(root, "modules"), SystemdDir: filepath.Join(root, "systemd", "system"),
		QEMU: "qemu-system-x86_64", CloudHypervisor: "cloud-hypervisor", Virtiofsd: "/usr/lib/qemu/virtiofsd", Cocoond: "/opt/cocoon/cocoond",
		LookPath: func(file string) (string, error) {
			if _, ok := bins[file]; !ok {
				return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
			}
			if strings.HasPrefix(file, "/") {
				return file, nil
			}
			return "/usr/bin/" + file, nil
		},
		Output: func(_ context.Context, path string, args ...string) ([]byte, error) {
			if filepath.Base(path) == "setpriv" && slices.Contains(args, "-sandbox") {
				if _, ok := bins["setpriv"]; !ok {
					return nil, fmt.Errorf("ran %s, which LookPath did not find", path)
				}
				return []byte(bins["setpriv"].version), bins["setpriv"].err
			}
			if len(args) != 1 || args[0] != "--version" {
				return nil, fmt.Errorf("unexpected args %v", args)
			}
			b, ok := bins[path]
			if !ok {
				b, ok = bins[filepath.Base(path)]
			}
			if !ok {
				return nil, fmt.Errorf("ran %s, which LookPath did not find", path)
			}
			return []byte(b.version), b.err
		},
		Access:   func(string, uint32) error { return nil },
		TryNetns: func() error { return nil },
	}
	return h, bins
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// testConfig loads a config file whose dirs are temp dirs, with a usable
// guest in runtime.guest_dir and a CNI network whose plugins exist, followed
// by extra TOML (keys of [runtime] first, then tables).
func testConfig(t *testing.T, extra string) *config.Loaded {
	t.Helper()
	runtimeKeys, rest := "", extra
	if k, ok := strings.CutPrefix(extra, "[runtime]\n"); ok {
		runtimeKeys, rest = k, ""
	}
	dir := t.TempDir()
	guestDir := filepath.Join(dir, "guest")
	guesttest.Install(t, guestDir, "v9.9.9")
	confDir, binDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "cni-bin")
	writeConflist(t, confDir, "10-test.conflist", "bridge", "portmap")
	installPlugins(t, binDir, "bridge", "portmap")
	body := fmt.Sprintf(`[daemon]
socket = "%[1]s/run/cocoon.sock"
state_dir = "%[1]s/state"
runtime_dir = "%[1]s/run"
[image]
graph_root = "%[1]s/state/storage"
run_root = "%[1]s/run/storage"
[cni]
conf_dir = %[2]q
bin_dirs = [%[3]q]
[runtime]
guest_dir = %[4]q
%[5]s`, dir, confDir, binDir, guestDir, runtimeKeys) + rest
	path := filepath.Join(dir, "cocoon.toml")
	writeFile(t, path, body)
	l, err := config.Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func writeConflist(t *testing.T, dir, name string, plugins ...string) {
	t.Helper()
	var ps []string
	for _, p := range plugins {
		ps = append(ps, fmt.Sprintf(`{"type": %q}`, p))
	}
	writeFile(t, filepath.Join(dir, name), fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "test", "plugins": [%s]}`, strings.Join(ps, ",")))
}

func installPlugins(t *testing.T, dir string, plugins ...string) {
	t.Helper()
	for _, p := range plugins {
		writeFile(t, filepath.Join(dir, p), "#!/bin/sh\n")
		if err := os.Chmod(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// byName finds the one result called name.
func byName(t *testing.T, results []Result, name string) Result {
	t.Helper()
	var found []Result
	for _, r := range results {
		if r.Name == name {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one result %q, got %d in %+v", name, len(found), results)
	}
	return found[0]
}

// wantResult checks a result's status and that its detail and fix say what they should.
func wantResult(t *testing.T, r Result, status Status, detail, fix string) {
	t.Helper()
	if r.Status != status || !strings.Contains(r.Detail, detail) || !strings.Contains(r.Fix, fix) {
		t.Fatalf("got %s %q detail %q fix %q; want %s, detail with %q, fix with %q", r.Status, r.Name, r.Detail, r.Fix, status, detail, fix)
	}
	if (r.Status == OK) != (r.Fix == "") {
		t.Fatalf("%s %q: a fix belongs to every problem and only to problems (fix %q)", r.Status, r.Name, r.Fix)
	}
}

func TestExitCode(t *testing.T) {
	for _, tt := range []struct {
		name     string
		statuses []Status
		want     int
	}{
		{"nothing checked", nil, 0},
		{"all ok", []Status{OK, OK}, 0},
		{"warnings do not fail", []Status{OK, Warn, Warn}, 0},
		{"one failure fails", []Status{OK, Warn, Fail, OK}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var rs []Result
			for _, s := range tt.statuses {
				rs = append(rs, Result{Status: s})
			}
			if got := ExitCode(rs); got != tt.want {
				t.Fatalf("ExitCode = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestRunHealthyHost(t *testing.T) {
	h, _ := fakeHost(t)
	loaded := testConfig(t, "")
	var reported []Result
	results := Run(context.Background(), h, loaded, Options{}, func(r Result) { reported = append(reported, r) })
	if len(reported) != len(results) {
		t.Fatalf("reported %d results, returned %d", len(reported), len(results))
	}
	var names []string
	for _, r := range results {
		names = append(names, r.Name)
		wantResult(t, r, OK, "", "")
	}
	want := "config root cgroups network namespaces /dev/net/tun overlayfs /dev/vhost-vsock /dev/kvm vmm clh vmm qemu vmm confinement virtiofsd guest cni dirs"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("checks\n got %s\nwant %s", got, want)
	}
	if ExitCode(results) != 0 {
		t.Fatal("healthy host fails")
	}
}

func TestRunReportsBadHostAndExits1(t *testing.T) {
	h, bins := fakeHost(t)
	h.Euid = 1000
	delete(bins, "qemu-system-x86_64")
	results := Run(context.Background(), h, testConfig(t, ""), Options{}, func(Result) {})
	wantResult(t, byName(t, results, "root"), Fail, "uid 1000", "run as root")
	wantResult(t, byName(t, results, "vmm qemu"), Fail, "qemu-system-x86_64 not found on PATH", "apt-get install qemu-system-x86")
	if ExitCode(results) != 1 {
		t.Fatal("want exit code 1")
	}
}

func TestConfigResult(t *testing.T) {
	wantResult(t, ConfigResult(nil, errors.New("config: invalid:\n  /etc/x.toml: image.driver: bad")), Fail, "image.driver", "correct the file")
	wantResult(t, ConfigResult(&config.Loaded{Files: []string{"/etc/cocoon/cocoon.toml"}}, nil), OK, "embedded defaults, /etc/cocoon/cocoon.toml", "")
}

func TestPrintText(t *testing.T) {
	var buf bytes.Buffer
	PrintText(&buf, Result{Status: Fail, Name: "config", Detail: "config: invalid:\n  a.toml: x: bad\n  b.toml: y: worse", Fix: "correct it"})
	PrintText(&buf, Result{Status: OK, Name: "root", Detail: "running as root"})
	want := "FAIL config                     config: invalid: a.toml: x: bad; b.toml: y: worse  [fix: correct it]\n" +
		"ok   root                       running as root\n"
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestPrintJSON(t *testing.T) {
	var buf bytes.Buffer
	in := []Result{{Status: OK, Name: "root", Detail: "running as root"}, {Status: Fail, Name: "cni", Detail: "none", Fix: "install one"}}
	if err := PrintJSON(&buf, in); err != nil {
		t.Fatal(err)
	}
	var out struct {
		Checks   []Result `json:"checks"`
		ExitCode int      `json:"exit_code"`
	}
	if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.ExitCode != 1 || len(out.Checks) != 2 || out.Checks[1] != in[1] {
		t.Fatalf("got %+v", out)
	}
}
