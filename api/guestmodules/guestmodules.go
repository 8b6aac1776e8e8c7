// Package guestmodules is the format of the guest's kernel module list, the
// one contract between `cocoon guest build` (vm/guest, on the host), which
// writes it into the initramfs, and the agent (agent/kmod, in the guest),
// which loads the modules it names. Both sides import it; it imports neither.
//
// The list lives at /lib/modules/<release>/cocoon.modules: one module path a
// line, relative to that directory, already in dependency order, so the
// guest needs neither modules.dep nor modprobe. Blank lines and '#' comments
// are skipped.
package guestmodules

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strings"
)

// ListName is the list's file name inside /lib/modules/<release>/.
const ListName = "cocoon.modules"

// Dir is the modules directory for release, relative to the guest's root
// and slash-separated (as an initramfs entry names it).
func Dir(release string) string {
	return "lib/modules/" + release
}

// ListPath is where the list for release lives under root.
func ListPath(root, release string) string {
	return filepath.Join(root, filepath.FromSlash(Dir(release)), ListName)
}

// Encode is the list naming mods (paths relative to the modules directory)
// in load order.
func Encode(mods []string) []byte {
	var b strings.Builder
	b.WriteString("# Written by cocoon guest build: load in this order.\n")
	for _, m := range mods {
		b.WriteString(m)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// Decode reads a list (name is the file, for errors). Absolute or escaping
// paths are refused, so a bad list cannot make the agent (PID 1) load a file
// from elsewhere.
func Decode(r io.Reader, name string) ([]string, error) {
	var mods []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if path.IsAbs(line) || !filepath.IsLocal(line) {
			return nil, fmt.Errorf("module list %s:%d: module path %q is not relative to the modules directory", name, n, line)
		}
		mods = append(mods, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("module list: read %s: %w", name, err)
	}
	return mods, nil
}

// Name is a module's name as the kernel knows it: the file name without
// its .ko suffix (and any compression suffix), with '-' turned into '_'.
func Name(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}
