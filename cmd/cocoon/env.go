package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/cocoon-runtime/cocoon/hostcheck"
)

const envUsage = `Usage: cocoon env [--config PATH] [--format toml|json]

Prints the configuration cocoond would run with, the files it came from, the
paths derived from it and the versions of cocoon, cocoond, the guest agent
and kernel, QEMU, Cloud Hypervisor and virtiofsd.

Flags:
`

// runEnv implements `cocoon env`; it returns the exit code.
func runEnv(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cocoon env", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, envUsage); fs.PrintDefaults() }
	cfgFlag := addConfigFlag(fs)
	format := fs.String("format", hostcheck.FormatTOML, "output format: toml or json")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if *format != hostcheck.FormatTOML && *format != hostcheck.FormatJSON {
		fmt.Fprintf(stderr, "cocoon env: --format must be toml or json, got %q\n", *format)
		return 2
	}
	loaded, err := cfgFlag.load()
	if err != nil {
		fmt.Fprintf(stderr, "cocoon env: %v\n", err)
		return 1
	}
	env := hostcheck.Describe(context.Background(), hostcheck.System(), loaded)
	if err := env.Encode(stdout, *format); err != nil {
		fmt.Fprintf(stderr, "cocoon env: %v\n", err)
		return 1
	}
	return 0
}
