// Command cocoon is the operator's CLI for a Cocoon node.
package main

import (
	"fmt"
	"os"

	"github.com/cocoon-runtime/cocoon/version"
)

const usage = `Usage: cocoon <command>

Commands:
  check                check this node and boot a probe VM per runtime handler (cocoon check --help)
  debug-console <pod>  root shell in a pod's VM, outside its containers
                       (needs [debug] console = true; cocoon debug-console --help)
  env                  print the effective configuration, derived paths and versions (cocoon env --help)
  guest                build the guest kernel and initramfs (cocoon guest build --help)
  version              print the version of this CLI
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "check":
		os.Exit(runCheck(os.Args[2:], os.Stdout, os.Stderr))
	case "env":
		os.Exit(runEnv(os.Args[2:], os.Stdout, os.Stderr))
	case "debug-console":
		os.Exit(runDebugConsole(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	case "guest":
		os.Exit(runGuest(os.Args[2:], os.Stdout, os.Stderr))
	case "version", "--version":
		fmt.Printf("cocoon %s (revision %s)\n", version.Version, version.Revision)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "cocoon: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
