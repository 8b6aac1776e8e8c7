// Command cocoon-test-images serves stand-ins for the images the critest
// conformance suite (cri-tools v1.36.0) pulls. The images are built from
// Debian's busybox-static, pushed to a local docker-registry under their
// original repository paths, and reached through a registries.conf mirror
// table, so tests run offline with image names unchanged.
//
// Usage:
//
//	cocoon-test-images up [--addr 127.0.0.1:5000] [--dir DIR] [--busybox /bin/busybox]
//	cocoon-test-images down [--dir DIR]
//	cocoon-test-images registries-conf [--addr 127.0.0.1:5000]
//	cocoon-test-images list
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
	"time"

	"github.com/sirupsen/logrus"
)

const (
	defaultAddr     = "127.0.0.1:5000"
	defaultDir      = "/tmp/cocoon-registry"
	defaultBusybox  = "/bin/busybox"
	defaultRegistry = "/usr/bin/docker-registry"
)

func main() {
	logrus.SetOutput(os.Stderr)
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cocoon-test-images:", err)
		os.Exit(1)
	}
}

func usage() error {
	return errors.New("usage: cocoon-test-images up|down|registries-conf|list [flags] (-h for flags)")
}

func run(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usage()
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	addr := fs.String("addr", defaultAddr, "registry listen address (host:port)")
	dir := fs.String("dir", defaultDir, "state directory for the registry (config, data, pid, log)")
	busybox := fs.String("busybox", defaultBusybox, "static busybox binary the images are built from")
	shell := fs.String("shell", shellFromDebian, `busybox serving sh: "debian" (Debian's PATH-searching busybox package), a path, or "" for busybox-static's own`)
	registry := fs.String("registry", defaultRegistry, "docker-registry binary")
	goTool := fs.String("go", findGo(), "go command used to build the nonewprivs helper")
	debug := fs.Bool("debug", false, "log every pushed tag")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", args[0], fs.Args())
	}
	if *debug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	switch args[0] {
	case "up":
		return up(stdout, *addr, *dir, *busybox, *shell, *registry, *goTool)
	case "down":
		return down(stdout, *dir)
	case "registries-conf":
		hosts, err := mirroredHosts(catalog())
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, registriesConf(*addr, hosts))
		return err
	case "list":
		for _, img := range catalog() {
			for _, n := range img.Names {
				fmt.Fprintln(stdout, n)
			}
		}
		return nil
	default:
		return usage()
	}
}

func up(stdout io.Writer, addr, dir, busybox, shell, registryBin, goTool string) (err error) {
	start := time.Now()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	specs := catalog()
	if err := checkCatalog(specs); err != nil {
		return err
	}
	hosts, err := mirroredHosts(specs)
	if err != nil {
		return err
	}
	// Build before touching the registry: a failed build then leaves
	// nothing running.
	shellBin, cleanupShell, err := resolveShell(ctx, shell)
	if err != nil {
		return err
	}
	defer cleanupShell()
	b, err := newBuilder(busybox, shellBin, goTool)
	if err != nil {
		return err
	}
	imgs, err := b.buildAll(specs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	switch perr := ping(ctx, addr); {
	case perr == nil:
		logrus.Infof("registry already answering on %s, reusing it", addr)
	case errors.Is(perr, errNoRegistry):
		pid, serr := startRegistry(ctx, registryBin, dir, addr)
		if serr != nil {
			return serr
		}
		logrus.Infof("started docker-registry pid %d on %s (state in %s)", pid, addr, dir)
		// A failed up leaves nothing running that it started.
		defer func() {
			if err == nil {
				return
			}
			if kerr := stopProcess(pid, nil); kerr != nil {
				logrus.Errorf("stopping the registry after failure: %v", kerr)
			}
			os.Remove(filepath.Join(dir, pidFile))
		}()
	default:
		return fmt.Errorf("cannot use %s: %w", addr, perr)
	}

	res, err := pushAll(ctx, addr, specs, imgs)
	if err != nil {
		return err
	}
	conf := filepath.Join(dir, confFile)
	if err := os.WriteFile(conf, []byte(registriesConf(addr, hosts)), 0o644); err != nil {
		return err
	}
	names := 0
	for _, s := range specs {
		names += len(s.Names)
	}
	fmt.Fprintf(stdout, "%d images (%d names) on %s: %d tags pushed, %d already present, in %s; mirror table %s\n",
		len(specs), names, addr, res.Pushed, res.Skipped, time.Since(start).Round(10*time.Millisecond), conf)
	return nil
}

func down(stdout io.Writer, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stdout, "%s: already down\n", dir)
		return nil
	}
	if err != nil {
		return err
	}
	// Refuse to delete a directory "up" did not create.
	for _, e := range entries {
		if !stateFiles[e.Name()] {
			return fmt.Errorf("%s contains %q, which up does not create; not removing it", dir, e.Name())
		}
	}
	stopped, err := stopRegistry(dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	what := "no registry was running"
	if stopped {
		what = "registry stopped"
	}
	fmt.Fprintf(stdout, "%s: %s, directory removed\n", dir, what)
	return nil
}
