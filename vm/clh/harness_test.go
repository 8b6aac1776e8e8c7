package clh

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/vm"
)

// harness runs the real driver against the fake cloud-hypervisor.
type harness struct {
	t      *testing.T
	dir    string // short: socket paths must fit sun_path
	record string
	env    map[string]string
	drv    *Driver
}

func newHarness(t *testing.T, fail string) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "clh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &harness{t: t, dir: dir, record: filepath.Join(dir, "record.jsonl")}
	// Whatever a failing test leaves running dies with it.
	t.Cleanup(func() {
		for _, pid := range h.started() {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
	h.env = map[string]string{envSpec: specPath(), envRecord: h.record, envFail: fail}
	old := vm.VirtiofsdPath
	vm.VirtiofsdPath = h.script("virtiofsd", "virtiofsd")
	t.Cleanup(func() { vm.VirtiofsdPath = old })
	h.drv = New(Options{Binary: h.script("cloud-hypervisor", "clh"), Log: testLog(t)})
	return h
}

// script writes an executable that runs this test binary as a fake.
func (h *harness) script(name, fake string) string {
	exe, err := os.Executable()
	if err != nil {
		h.t.Fatal(err)
	}
	env := map[string]string{envFake: fake}
	for k, v := range h.env {
		env[k] = v
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s='%s'\n", k, env[k])
	}
	fmt.Fprintf(&b, "exec '%s' \"$@\"\n", exe)
	return h.writeScript(name, b.String())
}

func (h *harness) writeScript(name, text string) string {
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// tap is a stand-in for a tap device: any fd passes SCM_RIGHTS.
func (h *harness) tap() *os.File {
	r, w, err := os.Pipe()
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { r.Close(); w.Close() })
	return r
}

// spec is a VM named name with nics NICs and, if share, one share.
func (h *harness) spec(name string, nics int, share bool) *vm.Spec {
	s := &vm.Spec{
		ID: name, RunDir: filepath.Join(h.dir, "run", name),
		Kernel: "/guest/vmlinuz", Initramfs: "/guest/initramfs.cpio.zst",
		VCPUs: 1, MaxVCPUs: 4, MemoryMiB: 256, MaxMemoryMiB: 1024,
		Disks: []vm.Disk{{ID: "disk0", Path: "/dev/null"}},
	}
	for i := range nics {
		mac, _ := net.ParseMAC(fmt.Sprintf("02:00:00:00:00:%02x", i+1))
		s.NICs = append(s.NICs, vm.NIC{ID: fmt.Sprintf("net%d", i), Tap: h.tap(), MAC: mac, MTU: 1500})
	}
	if share {
		src := filepath.Join(h.dir, "share-src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			h.t.Fatal(err)
		}
		s.Shares = []vm.Share{{Tag: "rootfs", Source: src}}
	}
	return s
}

// entries reads the record; every entry must be free of contract
// violations.
func (h *harness) entries() []entry {
	h.t.Helper()
	f, err := os.Open(h.record)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	var out []entry
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			h.t.Fatalf("record: %v", err)
		}
		if e.Violation != "" {
			h.t.Errorf("contract violation (pid %d, %s %s): %s", e.Pid, e.Method, e.Endpoint, e.Violation)
		}
		out = append(out, e)
	}
	return out
}

// started are the pids of every fake the harness ran.
func (h *harness) started() []int {
	b, _ := os.ReadFile(h.record)
	var pids []int
	for _, line := range strings.Split(string(b), "\n") {
		var e entry
		if json.Unmarshal([]byte(line), &e) == nil && e.Kind == "start" {
			pids = append(pids, e.Pid)
		}
	}
	return pids
}

// requests are "METHOD endpoint" the fake with pid got (0: any), repeated
// pings folded into one.
func (h *harness) requests(pid int) []string {
	var out []string
	for _, e := range h.entries() {
		if e.Kind != "request" || (pid != 0 && e.Pid != pid) {
			continue
		}
		r := e.Method + " " + e.Endpoint
		if r == "GET vmm.ping" && len(out) > 0 && out[len(out)-1] == r {
			continue
		}
		out = append(out, r)
	}
	return out
}

// find returns the requests to endpoint.
func (h *harness) find(endpoint string) []entry {
	var out []entry
	for _, e := range h.entries() {
		if e.Kind == "request" && e.Endpoint == endpoint {
			out = append(out, e)
		}
	}
	return out
}

// assertNothingLeft checks that every fake the harness started is gone
// and the run dirs are removed.
func (h *harness) assertNothingLeft() {
	h.t.Helper()
	h.entries() // reports contract violations
	for _, pid := range h.started() {
		if !exitsSoon(pid) {
			h.t.Errorf("process %d still running", pid)
		}
	}
	left, _ := filepath.Glob(filepath.Join(h.dir, "run", "*"))
	if len(left) > 0 {
		h.t.Errorf("left behind: %v", left)
	}
}

// exitsSoon waits up to two seconds for pid to be gone. A process that has
// exited but that its watcher has not reaped yet (a zombie) counts as gone:
// the reaping goroutine of a VMM that another one stopped runs on its own time.
func exitsSoon(pid int) bool {
	deadline := time.Now().Add(2 * time.Second)
	for {
		if unix.Kill(pid, 0) != nil {
			return true
		}
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testLog(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.DebugLevel)
	l.SetOutput(testWriter{t})
	return logrus.NewEntry(l)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
