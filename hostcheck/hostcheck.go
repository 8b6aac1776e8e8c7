// Package hostcheck checks that a node can run Cocoon pods (`cocoon check`)
// and describes the environment cocoond would run in (`cocoon env`). Every
// check reads the machine through Host, so tests can point it at temp dirs
// and fakes.
package hostcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/cni"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/clh"
	"github.com/cocoon-runtime/cocoon/vm/qemu"
)

// Status is a check's verdict. Only Fail makes `cocoon check` exit non-zero:
// a warning names something that works, worse or not at all, with a fallback.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "FAIL"
)

// Result is one checked thing: one line of the report.
type Result struct {
	Status Status `json:"status"`
	Name   string `json:"name"`
	Detail string `json:"detail"`
	// Fix says what to do about a problem; empty when Status is OK.
	Fix string `json:"fix,omitempty"`
}

func ok(name, format string, args ...any) Result {
	return Result{Status: OK, Name: name, Detail: fmt.Sprintf(format, args...)}
}

func problem(status Status, name, fix, format string, args ...any) Result {
	return Result{Status: status, Name: name, Detail: fmt.Sprintf(format, args...), Fix: fix}
}

// failOrWarn is Fail for what cocoond cannot do without, else Warn.
func failOrWarn(required bool) Status {
	if required {
		return Fail
	}
	return Warn
}

// ExitCode is 1 when any result failed, else 0.
func ExitCode(results []Result) int {
	for _, r := range results {
		if r.Status == Fail {
			return 1
		}
	}
	return 0
}

// PrintText writes r as one aligned line, its fix at the end.
func PrintText(w io.Writer, r Result) {
	// Multi-line details (config errors) stay on one line.
	detail := strings.NewReplacer(":\n", ": ", "\n", "; ").Replace(r.Detail)
	detail = strings.Join(strings.Fields(detail), " ")
	line := fmt.Sprintf("%-4s %-26s %s", r.Status, r.Name, detail)
	if r.Fix != "" {
		line += "  [fix: " + r.Fix + "]"
	}
	fmt.Fprintln(w, line)
}

// Summary counts the results by status, for the report's last line.
func Summary(results []Result) string {
	n := map[Status]int{}
	for _, r := range results {
		n[r.Status]++
	}
	return fmt.Sprintf("%d ok, %d warnings, %d failed", n[OK], n[Warn], n[Fail])
}

// PrintJSON writes every result and the exit code as one JSON document.
func PrintJSON(w io.Writer, results []Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Checks   []Result `json:"checks"`
		ExitCode int      `json:"exit_code"`
	}{results, ExitCode(results)})
}

// Host is the machine as the checks see it. System returns the real one.
type Host struct {
	Euid int
	// ProcDir, DevDir and ModulesDir are /proc, /dev and /lib/modules/<release>.
	ProcDir, DevDir, ModulesDir string
	// The binaries the drivers run, as they name them (bare names are
	// looked up on PATH, as the drivers do).
	QEMU, CloudHypervisor, Virtiofsd string
	// Cocoond is the daemon whose version `cocoon env` reports.
	Cocoond string
	// SystemdDir exists when systemd is the init (/run/systemd/system).
	SystemdDir string

	LookPath func(file string) (string, error)
	// Output runs a program and returns what it printed (stdout and stderr).
	Output func(ctx context.Context, path string, args ...string) ([]byte, error)
	// Access is access(2): nil when path may be used with mode (unix.W_OK...).
	Access func(path string, mode uint32) error
	// TryNetns creates a network namespace and removes it again.
	TryNetns func() error
}

// System is this machine, with the binary names the VMM drivers use.
func System() *Host {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return &Host{
		Euid:            os.Geteuid(),
		ProcDir:         "/proc",
		DevDir:          "/dev",
		ModulesDir:      filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:])),
		QEMU:            qemu.DefaultBinary,
		CloudHypervisor: clh.DefaultBinary,
		Virtiofsd:       vm.VirtiofsdPath,
		Cocoond:         cocoondBinary(),
		SystemdDir:      "/run/systemd/system",
		LookPath:        exec.LookPath,
		Output:          combinedOutput,
		Access:          unix.Access,
		TryNetns:        tryNetns,
	}
}

// vmmBinary is the binary the driver for vmm (config's handler.vmm) runs.
func (h *Host) vmmBinary(vmm string) string {
	if vmm == "clh" {
		return h.CloudHypervisor
	}
	return h.QEMU
}

// version finds bin and returns its path and the first line of
// `bin --version`; a binary not found is an error wrapping exec.ErrNotFound.
func (h *Host) version(ctx context.Context, bin string) (path, version string, err error) {
	path, err = h.LookPath(bin)
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := h.Output(ctx, path, "--version")
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if err != nil {
		return path, "", fmt.Errorf("%s --version: %v: %s", path, err, first)
	}
	return path, strings.TrimSpace(first), nil
}

func combinedOutput(ctx context.Context, path string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// cocoondBinary is the cocoond installed beside this binary (as `make build`
// and packages put them), else the one on PATH.
func cocoondBinary() string {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "cocoond")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "cocoond"
}

// tryNetns makes a pod-style network namespace (unshare + bind mount) under
// a temp dir and removes it, the way cocoond makes each pod's.
func tryNetns() error {
	dir, err := os.MkdirTemp("", "cocoon-check-netns-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := cni.NewNetns(dir, "probe")
	if err != nil {
		return err
	}
	return ns.Remove()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
