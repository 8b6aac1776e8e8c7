package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/hostcheck"
	"github.com/cocoon-runtime/cocoon/vm"
)

type checkReport struct {
	Checks   []hostcheck.Result `json:"checks"`
	ExitCode int                `json:"exit_code"`
}

// check runs `cocoon check args...` and decodes its JSON report.
func check(t *testing.T, args ...string) (checkReport, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := runCheck(append([]string{"--json"}, args...), &stdout, &stderr)
	var rep checkReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("exit %d, output is not JSON: %v\n%s\n%s", code, err, stdout.String(), stderr.String())
	}
	for _, r := range rep.Checks {
		t.Logf("%-4s %-24s %s  %s", r.Status, r.Name, r.Detail, r.Fix)
	}
	if code != rep.ExitCode || code != hostcheck.ExitCode(rep.Checks) {
		t.Fatalf("exit code %d, report says %d", code, rep.ExitCode)
	}
	return rep, code
}

func result(t *testing.T, rep checkReport, name string) hostcheck.Result {
	t.Helper()
	for _, r := range rep.Checks {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no result %q", name)
	return hostcheck.Result{}
}

// exitCase is a command line and what the command must answer.
type exitCase struct {
	name string
	args []string
	code int
	out  string // in stdout or stderr
}

func testExits(t *testing.T, run func([]string, io.Writer, io.Writer) int, cases []exitCase) {
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := run(tt.args, &out, &out); code != tt.code || !strings.Contains(out.String(), tt.out) {
				t.Fatalf("exit %d, want %d; output lacks %q:\n%s", code, tt.code, tt.out, out.String())
			}
		})
	}
}

func TestCheckUsageErrors(t *testing.T) {
	testExits(t, runCheck, []exitCase{
		{"unknown flag", []string{"--bogus"}, 2, "flag provided but not defined"},
		{"stray argument", []string{"now"}, 2, `unexpected argument "now"`},
		{"help", []string{"--help"}, 0, "Usage: cocoon check"},
		{"missing explicit config", []string{"--no-boot", "--config", "/nonexistent/cocoon.toml"}, 1, "FAIL config"},
	})
}

func TestCheckInvalidConfigFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cocoon.toml")
	if err := os.WriteFile(path, []byte("[image]\ndriver = \"zfs\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, code := check(t, "--no-boot", "--config", path)
	if code != 1 || len(rep.Checks) != 1 || !strings.Contains(rep.Checks[0].Detail, path+": image.driver") {
		t.Fatalf("exit %d, %+v", code, rep)
	}
}

// TestCheckThisHost runs the real host checks (no boot) on this machine with
// the configuration cocoond would load.
func TestCheckThisHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the host checks need root (netns, /dev/net/tun, /dev/kvm)")
	}
	rep, _ := check(t, "--no-boot")
	want := []string{"config", "root", "cgroups", "network namespaces", "/dev/net/tun", "overlayfs",
		"/dev/vhost-vsock", "/dev/kvm", "vmm qemu", "virtiofsd", "guest", "cni", "dirs"}
	for _, name := range want {
		r := result(t, rep, name)
		if (r.Status == hostcheck.OK) != (r.Fix == "") {
			t.Errorf("%s %q: fix %q", r.Status, r.Name, r.Fix)
		}
	}
	for _, name := range []string{"config", "root", "network namespaces", "/dev/net/tun"} {
		if r := result(t, rep, name); r.Status != hostcheck.OK {
			t.Errorf("%s is %s here: %s", name, r.Status, r.Detail)
		}
	}
	// The binary checks agree with what is installed.
	_, qemuErr := exec.LookPath("qemu-system-x86_64")
	_, vfsErr := os.Stat(vm.VirtiofsdPath)
	for name, installed := range map[string]bool{"vmm qemu": qemuErr == nil, "virtiofsd": vfsErr == nil} {
		if r := result(t, rep, name); (r.Status == hostcheck.OK) != installed {
			t.Errorf("%s: installed %v but %s: %s", name, installed, r.Status, r.Detail)
		}
	}
}

// TestCheckBootsQEMU boots the probe VMs for real: TCG must boot the guest,
// and nothing may be left behind.
//
//	flock /tmp/cocoon-vm.lock env CGO_ENABLED=1 COCOON_INTEGRATION=1 COCOON_GUEST_DIR=$PWD/_output/guest go test -run TestCheckBootsQEMU -v ./cmd/cocoon/
func TestCheckBootsQEMU(t *testing.T) {
	if os.Getenv("COCOON_INTEGRATION") == "" || os.Geteuid() != 0 {
		t.Skip("skipping: needs root and COCOON_INTEGRATION (boots VMs)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipping: qemu-system-x86_64 not installed")
	}
	guestDir := os.Getenv("COCOON_GUEST_DIR")
	if guestDir == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make guest GUEST_DIR=...)")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "cocoon.toml")
	cfg := fmt.Sprintf("[daemon]\nstate_dir = %q\nruntime_dir = %q\n[runtime]\nguest_dir = %q\n",
		filepath.Join(dir, "state"), filepath.Join(dir, "run"), guestDir)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)

	rep, _ := check(t, "--config", path)
	boot := result(t, rep, "boot cocoon (qemu)")
	if boot.Status != hostcheck.OK || !strings.Contains(boot.Detail, "-> tcg: agent healthy in ") || !strings.Contains(boot.Detail, "; accel=auto will pick ") {
		t.Fatalf("qemu handler: %+v", boot)
	}
	if _, err := exec.LookPath("cloud-hypervisor"); err != nil {
		if r := result(t, rep, "boot cocoon-clh (clh)"); r.Status != hostcheck.Warn || !strings.Contains(r.Detail, "skipped: cloud-hypervisor not installed") {
			t.Fatalf("clh handler without its binary: %+v", r)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Fatalf("left behind in TMPDIR: %v", left)
	}
	if procs := probeProcesses(t); len(procs) > 0 {
		t.Fatalf("probe processes left running: %v", procs)
	}
}

// probeProcesses lists processes whose command line names a probe VM.
func probeProcesses(t *testing.T) []string {
	t.Helper()
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("cocoon-check-")) {
			found = append(found, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return found
}
