// Command cocoon is the operator's CLI for a Cocoon node.
package main

import (
	"fmt"
	"os"

	"github.com/cocoon-runtime/cocoon/version"
)

const usage = `Usage: cocoon <command>

Commands:
  debug-console <pod>  root shell in a pod's VM, outside its containers
                       (needs [debug] console = true; cocoon debug-console --help)
  guest                build the guest kernel and initramfs (cocoon guest build --help)
  version              print the version of this CLI
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
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
