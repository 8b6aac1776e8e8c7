package main

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cocoon-runtime/cocoon/vm/guest"
)

// The upstream busybox test image's sh finds applets through PATH, so a
// masked /bin/ls fails to run ("/bin/sh: ls: Permission denied"). Debian's
// busybox-static is built as a standalone shell that runs its applets
// without looking at /bin at all, which hides masked paths. Debian's
// dynamically linked busybox package is built without that feature, so
// the images take their sh and ash from it (with the libraries it needs)
// and every other applet from busybox-static.

const (
	// shellFromDebian fetches the shell busybox from Debian's package.
	shellFromDebian = "debian"
	shellPackage    = "busybox"
	shellCacheDir   = "/var/cache/cocoon/test-images"
	shellBinary     = "bin/busybox.sh"
	libDir          = "/lib/x86_64-linux-gnu"
)

// shellApplets are served by the PATH-searching busybox.
var shellApplets = []string{"bin/sh", "bin/ash"}

// resolveShell turns the --shell flag into a binary path: "debian" unpacks
// Debian's busybox package (cached), "" keeps busybox-static's own shell.
func resolveShell(ctx context.Context, flagValue string) (bin string, cleanup func(), err error) {
	if flagValue != shellFromDebian {
		return flagValue, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "cocoon-shell-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	deb := &guest.Debian{Package: shellPackage, CacheDir: shellCacheDir}
	if _, err := deb.Unpack(ctx, dir); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("shell busybox: %w", err)
	}
	return filepath.Join(dir, "bin", "busybox"), cleanup, nil
}

// shellFiles returns the shell binary and the shared objects it loads,
// each at the path the dynamic loader looks for it.
func shellFiles(bin string) ([]file, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read shell busybox: %w", err)
	}
	deps, err := sharedObjects(bin)
	if err != nil {
		return nil, err
	}
	files := []file{{Path: shellBinary, Mode: 0o755, Data: string(data)}}
	for _, dep := range deps {
		real, err := filepath.EvalSymlinks(dep)
		if err != nil {
			return nil, fmt.Errorf("shell busybox needs %s: %w", dep, err)
		}
		lib, err := os.ReadFile(real)
		if err != nil {
			return nil, err
		}
		files = append(files, file{Path: strings.TrimPrefix(dep, "/"), Mode: 0o755, Data: string(lib)})
	}
	return files, nil
}

// sharedObjects lists the program interpreter and every library the
// binary needs, transitively, as absolute host paths.
func sharedObjects(bin string) ([]string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seen := map[string]bool{}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("%s: interpreter: %w", bin, err)
			}
			seen[strings.TrimRight(string(b), "\x00")] = true
		}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("%s is not dynamically linked: want Debian's busybox package, not busybox-static", bin)
	}
	queue := []string{bin}
	for len(queue) > 0 {
		needed, err := neededLibraries(queue[0])
		if err != nil {
			return nil, err
		}
		queue = queue[1:]
		for _, lib := range needed {
			p := path.Join(libDir, lib)
			if !seen[p] {
				seen[p] = true
				queue = append(queue, p)
			}
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

func neededLibraries(p string) ([]string, error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return libs, nil
}
