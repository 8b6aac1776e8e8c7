package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/cocoon-runtime/cocoon/vm/guest"
)

const guestUsage = `Usage: cocoon guest build [--out DIR] [--agent PATH] [--cache DIR]
                          [--agent-version STRING] [--kernel-package NAME]
                          [--busybox PATH]

Builds the guest every pod VM boots: Debian's cloud kernel and an initramfs
with the agent as /init, the kernel modules it needs and a static busybox
(the tools of cocoon debug-console), installed with a manifest into --out.
`

// runGuest implements `cocoon guest ...`; it returns the exit code.
func runGuest(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "build" {
		fmt.Fprint(stderr, guestUsage)
		return 2
	}
	fs := flag.NewFlagSet("cocoon guest build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, guestUsage); fs.PrintDefaults() }
	out := fs.String("out", guest.DefaultDir, "directory to install the guest into")
	agent := fs.String("agent", "", "agent binary to pack as /init (default: cocoon-agent beside this cocoon)")
	cache := fs.String("cache", guest.DefaultCacheDir, "directory caching downloaded kernel packages")
	agentVersion := fs.String("agent-version", "", "agent version to record in the manifest")
	kpkg := fs.String("kernel-package", guest.DefaultKernelPackage, "Debian kernel package (or metapackage) to use")
	busybox := fs.String("busybox", guest.DefaultBusybox, "static busybox to pack as /bin/busybox (from busybox-static); \"\" leaves the tools out")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cocoon guest build: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *agent == "" {
		p, err := defaultAgent()
		if err != nil {
			fmt.Fprintf(stderr, "cocoon guest build: %v\n", err)
			return 1
		}
		*agent = p
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m, err := guest.Build(ctx, guest.Options{
		Out:          *out,
		Agent:        *agent,
		AgentVersion: *agentVersion,
		Busybox:      *busybox,
		Source:       &guest.Debian{Package: *kpkg, CacheDir: *cache},
	})
	if err != nil {
		fmt.Fprintf(stderr, "cocoon guest build: %v\n", err)
		return 1
	}
	printManifest(stdout, m)
	return 0
}

// defaultAgent is the cocoon-agent installed beside this binary, where
// `make build` and packages put it.
func defaultAgent() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(self), "cocoon-agent")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no agent given and %s not found: pass --agent", p)
	}
	return p, nil
}

func printManifest(w io.Writer, m *guest.Manifest) {
	fmt.Fprintf(w, "guest installed in %s\n", m.Dir)
	fmt.Fprintf(w, "  kernel     %s (%s %s)\n", m.KernelVersion, m.KernelPackage, m.KernelPackageVersion)
	fmt.Fprintf(w, "  vmlinuz    %d bytes  sha256 %s\n", m.Kernel.Size, m.Kernel.SHA256)
	fmt.Fprintf(w, "  initramfs  %d bytes  sha256 %s\n", m.Initramfs.Size, m.Initramfs.SHA256)
	fmt.Fprintf(w, "  agent      sha256 %s", m.Agent.SHA256)
	if m.AgentVersion != "" {
		fmt.Fprintf(w, "  version %s", m.AgentVersion)
	}
	if m.Busybox != nil {
		fmt.Fprintf(w, "\n  busybox    sha256 %s  applets %v", m.Busybox.SHA256, m.BusyboxApplets)
	}
	fmt.Fprintf(w, "\n  modules    %d loaded at boot, %d built in", len(m.Modules), len(m.Builtin))
	if len(m.Unavailable) > 0 {
		fmt.Fprintf(w, ", unavailable: %v", m.Unavailable)
	}
	fmt.Fprintln(w)
}
