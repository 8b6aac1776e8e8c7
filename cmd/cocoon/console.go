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

	"golang.org/x/term"

	"github.com/cocoon-runtime/cocoon/admin"
	"github.com/cocoon-runtime/cocoon/config"
)

const consoleUsage = `Usage: cocoon debug-console [--config PATH] [--admin-socket PATH] <pod>

Opens a root shell in the pod's VM, outside every container: the guest's own
root, with busybox's tools (sh, ls, cat, ps, mount, ip, dmesg, top, free, df;
busybox --list for the rest). <pod> is a pod ID, a unique ID prefix, or a pod
name (name or namespace/name). cocoond must run with [debug] console = true.

With a terminal the session is interactive (raw mode; window resizes follow).
Without one, stdin is the script:
  echo 'cat /proc/version' | cocoon debug-console web
Exits with the shell's exit code; 1 when there was no session.
`

// runDebugConsole implements `cocoon debug-console`; it returns the exit code.
func runDebugConsole(args []string, stdin, stdout *os.File, stderr io.Writer) int {
	fs := flag.NewFlagSet("cocoon debug-console", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, consoleUsage); fs.PrintDefaults() }
	configPath := fs.String("config", config.DefaultPath, "cocoond's configuration file; the admin socket is admin.sock in its daemon.runtime_dir")
	socket := fs.String("admin-socket", "", "cocoond's admin socket (default: from the configuration)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprint(stderr, consoleUsage)
		return 2
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	path, err := adminSocket(*socket, *configPath, explicit)
	if err != nil {
		fmt.Fprintf(stderr, "cocoon debug-console: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	req := admin.ConsoleRequest{Pod: fs.Arg(0), Term: os.Getenv("TERM")}
	var resize chan admin.Size
	restore := func() {}
	if term.IsTerminal(int(stdin.Fd())) && term.IsTerminal(int(stdout.Fd())) {
		req.TTY = true
		if req.Term == "" {
			req.Term = "xterm"
		}
		req.Size, _ = terminalSize(stdout)
		state, err := term.MakeRaw(int(stdin.Fd()))
		if err != nil {
			fmt.Fprintf(stderr, "cocoon debug-console: terminal raw mode: %v\n", err)
			return 1
		}
		restore = func() { _ = term.Restore(int(stdin.Fd()), state) }
		defer restore()
		resize = followResizes(ctx, stdout)
	}
	code, err := admin.DebugConsole(ctx, path, req, stdin, stdout, stderr, resize)
	restore()
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "cocoon debug-console: interrupted; the shell was ended")
		return 130
	case err != nil:
		fmt.Fprintf(stderr, "cocoon debug-console: %v\n", err)
		return 1
	}
	return int(code)
}

// adminSocket is the socket given, else the one cocoond's configuration
// (the same files and drop-ins cocoond reads) puts in its runtime dir.
func adminSocket(given, configPath string, configExplicit bool) (string, error) {
	if given != "" {
		return given, nil
	}
	loaded, err := config.Load(configPath, configExplicit)
	if err != nil {
		return "", err
	}
	return loaded.Config.Daemon.AdminSocket(), nil
}

func terminalSize(f *os.File) (admin.Size, error) {
	w, h, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return admin.Size{}, err
	}
	return admin.Size{Rows: uint16(h), Cols: uint16(w)}, nil
}

// followResizes sends the terminal's size on each SIGWINCH until ctx ends.
func followResizes(ctx context.Context, f *os.File) chan admin.Size {
	out := make(chan admin.Size, 1)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		defer signal.Stop(winch)
		for {
			select {
			case <-winch:
				sz, err := terminalSize(f)
				if err != nil {
					continue
				}
				// Only the latest size matters: replace one not yet sent.
				select {
				case <-out:
				default:
				}
				out <- sz
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}
