package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"strings"

	"github.com/cocoon-runtime/cocoon/config"
)

// vmmFix says how to install each VMM.
var vmmFix = map[string]string{
	"qemu": "apt-get install qemu-system-x86",
	"clh":  "install the cloud-hypervisor release binary on PATH (Debian has no package); it also needs working KVM",
}

// handlersBy groups the handlers by key (their VMM, their guest dir), sorted.
func handlersBy(rt config.Runtime, key func(config.Handler) string) map[string][]string {
	by := map[string][]string{}
	for _, name := range rt.HandlerNames() {
		if rt.Handlers[name].Kind == config.KindHost {
			continue // host containers need no VMM and no guest
		}
		k := key(rt.Handlers[name])
		by[k] = append(by[k], name)
	}
	return by
}

// usedByDefault tells whether the default handler is among handlers: what it
// needs is required, what only other handlers need is a warning.
func usedByDefault(rt config.Runtime, handlers []string) bool {
	for _, h := range handlers {
		if h == rt.DefaultHandler {
			return true
		}
	}
	return false
}

// checkVMMs finds the binary of every VMM a handler names and its version.
func (h *Host) checkVMMs(ctx context.Context, rt config.Runtime) []Result {
	var results []Result
	byVMM := handlersBy(rt, func(hd config.Handler) string { return hd.VMM })
	for _, vmm := range sortedKeys(byVMM) {
		handlers := byVMM[vmm]
		name := "vmm " + vmm
		status := failOrWarn(usedByDefault(rt, handlers))
		users := handlerList(handlers)
		path, version, err := h.version(ctx, h.vmmBinary(vmm))
		switch {
		case path == "":
			results = append(results, problem(status, name, vmmFix[vmm], "%s (%s cannot run pods)", notFound(h.vmmBinary(vmm), err), users))
		case err != nil:
			results = append(results, problem(status, name, vmmFix[vmm], "%s does not run (%s): %v", path, users, err))
		default:
			results = append(results, ok(name, "%s: %s (%s)", path, version, users))
		}
	}
	return results
}

// handlerList names handlers for a report: "handler a" or "handlers a, b".
func handlerList(handlers []string) string {
	if len(handlers) == 1 {
		return "handler " + handlers[0]
	}
	return "handlers " + strings.Join(handlers, ", ")
}

// notFound says why LookPath did not find bin.
func notFound(bin string, err error) string {
	if errors.Is(err, exec.ErrNotFound) && !strings.Contains(bin, "/") {
		return bin + " not found on PATH"
	}
	if errors.Is(err, fs.ErrNotExist) {
		return bin + " does not exist"
	}
	return err.Error()
}

// checkVirtiofsd: every pod's share is served by virtiofsd.
func (h *Host) checkVirtiofsd(ctx context.Context) Result {
	const name = "virtiofsd"
	const fix = "apt-get install qemu-system-common (Debian's virtiofsd is /usr/lib/qemu/virtiofsd)"
	path, version, err := h.version(ctx, h.Virtiofsd)
	if err != nil {
		if path == "" {
			err = errors.New(notFound(h.Virtiofsd, err))
		}
		return problem(Fail, name, fix, "%v (pods need it for their shared dir)", err)
	}
	return ok(name, "%s: %s", path, version)
}

// binaryVersion is a binary's version for `cocoon env`: "not installed" when
// it is missing, never an error.
func (h *Host) binaryVersion(ctx context.Context, bin string) string {
	path, version, err := h.version(ctx, bin)
	switch {
	case path == "":
		return "not installed"
	case err != nil:
		return fmt.Sprintf("unknown (%v)", err)
	default:
		return version + " at " + path
	}
}
