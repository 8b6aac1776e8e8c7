package hostcheck

import (
	"context"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm/qemu"
)

// confinementSummary says what runs confined and how (docs/ARCHITECTURE.md,
// "Hardening: agent access and VMM confinement").
const confinementSummary = "qemu: no capabilities (setpriv empties the bounding, inheritable and ambient sets), no_new_privs, " +
	"seccomp -sandbox obsolete/elevateprivileges/spawn/resourcecontrol=deny; virtiofsd: its own sandbox=namespace, seccomp " +
	"and only the file capabilities it serves guest uids with; cloud-hypervisor: its built-in seccomp"

// checkConfinement runs QEMU confined exactly as the driver starts it: a host
// where setpriv is missing or QEMU has no seccomp cannot start a qemu VM.
func (h *Host) checkConfinement(ctx context.Context, rt config.Runtime) Result {
	const name = "vmm confinement"
	handlers := handlersBy(rt, func(hd config.Handler) string { return hd.VMM })["qemu"]
	if len(handlers) == 0 {
		return ok(name, "no qemu handler; %s", confinementSummary)
	}
	status := failOrWarn(usedByDefault(rt, handlers))
	setpriv, err := h.LookPath("setpriv")
	if err != nil {
		return problem(status, name, "apt-get install util-linux", "%s: qemu VMs are started through it (%s cannot run pods)", notFound("setpriv", err), handlerList(handlers))
	}
	bin, err := h.LookPath(h.QEMU)
	if err != nil {
		return problem(status, name, vmmFix["qemu"], "%s", notFound(h.QEMU, err))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	argv := qemu.ConfinementProbe(setpriv, bin)
	if out, err := h.Output(ctx, argv[0], argv[1:]...); err != nil {
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return problem(status, name, "a QEMU built with seccomp (Debian's qemu-system-x86 is)", "confined qemu does not start (%s): %v: %s", handlerList(handlers), err, first)
	}
	return ok(name, "%s", confinementSummary)
}
