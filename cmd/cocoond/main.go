// Command cocoond is the Cocoon CRI runtime daemon: kubelet, crictl and critest
// talk to it on one unix socket; every pod it runs lives in its own VM.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"go.podman.io/storage/pkg/reexec"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/version"
)

const usage = `Usage: cocoond [flags] [command]

Commands:
  (none)     serve CRI on the socket
  config     print the effective configuration (defaults + file + drop-ins) and exit
  version    print the version and exit

Flags:
`

type flags struct {
	configPath string
	socket     string
	logLevel   string
}

func main() {
	// containers/storage re-executes this binary for some layer operations.
	if reexec.Init() {
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cocoond:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var f flags
	fs := flag.NewFlagSet("cocoond", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	fs.StringVar(&f.configPath, "config", config.DefaultPath, "configuration file; drop-ins are read from config.d/*.toml beside it")
	fs.StringVar(&f.socket, "socket", "", "CRI socket path (overrides daemon.socket)")
	fs.StringVar(&f.logLevel, "log-level", "", "log level (overrides daemon.log_level)")
	showVersion := fs.Bool("version", false, "print the version and exit (same as the version command)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	explicit := false
	fs.Visit(func(fl *flag.Flag) { explicit = explicit || fl.Name == "config" })

	command := fs.Arg(0)
	if command == "version" || *showVersion {
		fmt.Printf("cocoond %s (revision %s)\n", version.Version, version.Revision)
		return nil
	}
	loaded, err := config.Load(f.configPath, explicit)
	if err != nil {
		return err
	}
	cfg := &loaded.Config
	if f.socket != "" {
		cfg.Daemon.Socket = f.socket
	}
	if f.logLevel != "" {
		cfg.Daemon.LogLevel = f.logLevel
	}
	if errs := cfg.Daemon.Validate(); len(errs) > 0 {
		return fmt.Errorf("flags: %v", errs[0])
	}

	switch command {
	case "":
		return serve(loaded, f.configPath)
	case "config":
		out, err := cfg.Marshal()
		if err != nil {
			return err
		}
		fmt.Printf("# effective configuration; sources: %s\n", sources(loaded))
		_, err = os.Stdout.Write(out)
		return err
	default:
		return fmt.Errorf("unknown command %q (try --help)", command)
	}
}

func sources(l *config.Loaded) string { return strings.Join(l.Sources(), ", ") }
