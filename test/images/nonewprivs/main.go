// Command nonewprivs prints the effective uid it runs with. The test image
// installs it setuid root: critest's NoNewPrivs specs expect
// "Effective uid: 0" when privilege escalation is allowed and the caller's
// uid when no_new_privs blocks the setuid bit.
//
// It is built by cocoon-test-images at image build time (static, no cgo),
// since the busybox-based image has no compiler.
package main

import (
	"os"
	"strconv"
	"syscall"
)

func main() {
	// Only os/strconv/syscall: keeps the static binary small.
	if _, err := os.Stdout.WriteString("Effective uid: " + strconv.Itoa(syscall.Geteuid()) + "\n"); err != nil {
		os.Exit(1)
	}
}
