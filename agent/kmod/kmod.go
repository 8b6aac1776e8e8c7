// Package kmod loads the kernel modules that `cocoon guest build` put into
// the guest's initramfs. It runs inside the guest, in the agent (PID 1),
// before any virtio device the agent talks through can be used.
//
// The build writes the module list (api/guestmodules: module paths in
// dependency order), so this package needs neither modules.dep nor modprobe:
// it loads the lines in order.
package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/api/guestmodules"
)

// Load loads, in order, every module listed in the load-order file under
// root for the running kernel. A module the kernel already has (EEXIST) is
// fine; any other failure stops the load and names the module.
func Load(root string) error {
	release, err := Release()
	if err != nil {
		return err
	}
	_, err = load(root, release, finit)
	return err
}

// Modules returns the load-order file's entries for the running kernel, as
// paths relative to /lib/modules/<release>/.
func Modules(root string) ([]string, error) {
	release, err := Release()
	if err != nil {
		return nil, err
	}
	return readList(guestmodules.ListPath(root, release))
}

// Release is the running kernel's release (uname -r).
func Release() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("kmod: uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// finitFunc loads the module open on f; a variable seam so tests need no
// root and no real kernel.
type finitFunc func(f *os.File) error

func finit(f *os.File) error {
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// load does Load's work for a given release and loader, returning the
// modules it went through (loaded now or already present).
func load(root, release string, fn finitFunc) ([]string, error) {
	list := guestmodules.ListPath(root, release)
	mods, err := readList(list)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// The usual cause is a guest kernel that is not the one the
			// initramfs was built for; say which release we looked for.
			return nil, fmt.Errorf("kmod: no module list for kernel %s: %w", release, err)
		}
		return nil, err
	}
	dir := filepath.Dir(list)
	for i, m := range mods {
		if err := loadOne(filepath.Join(dir, m), fn); err != nil {
			return mods[:i], fmt.Errorf("kmod: load module %s (%s): %w", guestmodules.Name(m), m, err)
		}
	}
	return mods, nil
}

func loadOne(file string, fn finitFunc) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fn(f); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

func readList(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return guestmodules.Decode(f, file)
}
