package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/hostcheck"
)

const checkUsage = `Usage: cocoon check [--config PATH] [--json] [--no-boot]

Checks that this node can run Cocoon pods with the configuration cocoond
would load, one line per check (ok, warn or FAIL, and the fix for every
problem), then boots a probe VM with every runtime handler. Exits 1 when a
check failed; warnings do not.

Flags:
`

// runCheck implements `cocoon check`; it returns the exit code.
func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cocoon check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage); fs.PrintDefaults() }
	cfgFlag := addConfigFlag(fs)
	asJSON := fs.Bool("json", false, "print the results as one JSON document")
	noBoot := fs.Bool("no-boot", false, "skip the probe VM boots")
	if code, done := parseFlags(fs, args); done {
		return code
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report := func(r hostcheck.Result) { hostcheck.PrintText(stdout, r) }
	if *asJSON {
		report = func(hostcheck.Result) {}
	}
	var results []hostcheck.Result
	if loaded, err := cfgFlag.load(); err != nil {
		results = []hostcheck.Result{hostcheck.ConfigResult(nil, err)}
		report(results[0])
	} else {
		results = hostcheck.Run(ctx, hostcheck.System(), loaded, hostcheck.Options{Boot: !*noBoot}, report)
	}
	if *asJSON {
		if err := hostcheck.PrintJSON(stdout, results); err != nil {
			fmt.Fprintf(stderr, "cocoon check: %v\n", err)
			return 1
		}
	} else {
		fmt.Fprintln(stdout, hostcheck.Summary(results))
	}
	return hostcheck.ExitCode(results)
}

// configFlag is --config, loaded as cocoond loads it: a file named
// explicitly must exist, the default one may be absent.
type configFlag struct {
	fs   *flag.FlagSet
	path *string
}

func addConfigFlag(fs *flag.FlagSet) configFlag {
	return configFlag{fs: fs, path: fs.String("config", config.DefaultPath, "cocoond's configuration file; drop-ins are read from config.d/*.toml beside it")}
}

func (c configFlag) load() (*config.Loaded, error) {
	explicit := false
	c.fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	return config.Load(*c.path, explicit)
}

// parseFlags parses args; done says the command ends here with code
// (help asked for, a bad flag, or a stray argument).
func parseFlags(fs *flag.FlagSet, args []string) (code int, done bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, true
		}
		return 2, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, true
	}
	return 0, false
}
