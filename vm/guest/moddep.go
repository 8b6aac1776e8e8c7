package guest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/cocoon-runtime/cocoon/api/guestmodules"
)

// modInfo is one module: its file relative to /lib/modules/<ver>/ and the
// names of the modules it needs.
type modInfo struct {
	Path string
	Deps []string
}

// depGraph maps module name (as guestmodules.Name spells it) to its modInfo.
type depGraph map[string]modInfo

// parseModulesDep reads depmod's modules.dep ("a.ko: b.ko c.ko" lines).
func parseModulesDep(r io.Reader) (depGraph, error) {
	g := depGraph{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024) // some modules have long dep lines
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(mod) == "" {
			return nil, fmt.Errorf("guest: modules.dep:%d: malformed line %q", n, line)
		}
		mod = strings.TrimSpace(mod)
		info := modInfo{Path: mod}
		for _, d := range strings.Fields(deps) {
			info.Deps = append(info.Deps, guestmodules.Name(d))
		}
		g[guestmodules.Name(mod)] = info
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("guest: read modules.dep: %w", err)
	}
	return g, nil
}

// loadDepGraph reads modDir/modules.dep when there is one. Debian's kernel
// package does not ship it (depmod runs in postinst), so otherwise the graph
// is built from each module's own "depends=" modinfo, which modpost derives
// from the same symbol references depmod uses.
func loadDepGraph(modDir string) (depGraph, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err == nil {
		defer f.Close()
		return parseModulesDep(f)
	}
	if !os.IsNotExist(err) {
		return nil, err
	}
	g := depGraph{}
	err = filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !isModuleFile(p) {
			return err
		}
		rel, err := filepath.Rel(modDir, p)
		if err != nil {
			return err
		}
		deps, err := modinfoDepends(p)
		if err != nil {
			return fmt.Errorf("guest: read modinfo of %s: %w", rel, err)
		}
		g[guestmodules.Name(rel)] = modInfo{Path: filepath.ToSlash(rel), Deps: deps}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return g, nil
}

// order returns the module paths to load for names, each module after all
// it depends on, in a stable order: names in the order given, each one's
// dependencies in the order the graph lists them.
func (g depGraph) order(names []string) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []string
	var visit func(name, neededBy string) error
	visit = func(name, neededBy string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("guest: module dependency cycle through %s", name)
		}
		info, ok := g[name]
		if !ok {
			if neededBy != "" {
				return fmt.Errorf("guest: module %s (needed by %s) not found", name, neededBy)
			}
			return fmt.Errorf("guest: module %s not found", name)
		}
		state[name] = visiting
		for _, d := range info.Deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = done
		out = append(out, info.Path)
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func isModuleFile(p string) bool {
	for _, s := range []string{".ko", ".ko.xz", ".ko.zst"} {
		if strings.HasSuffix(p, s) {
			return true
		}
	}
	return false
}

// readModule returns a module file's ELF bytes, decompressing .ko.xz and
// .ko.zst: the guest loads plain files with finit_module and flags 0, which
// works whether or not the kernel can decompress modules itself.
func readModule(p string) ([]byte, error) {
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(p, ".ko.xz"):
		if r, err = xz.NewReader(bytes.NewReader(raw)); err != nil {
			return nil, err
		}
	case strings.HasSuffix(p, ".ko.zst"):
		d, err := zstd.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		r = d
	default:
		return raw, nil
	}
	return io.ReadAll(r)
}

// modinfoDepends reads the "depends=" entry of a module's .modinfo section.
func modinfoDepends(p string) ([]string, error) {
	var ef *elf.File
	var err error
	if strings.HasSuffix(p, ".ko") {
		// Plain modules: read just the section, not the whole file.
		ef, err = elf.Open(p)
	} else {
		var b []byte
		if b, err = readModule(p); err == nil {
			ef, err = elf.NewFile(bytes.NewReader(b))
		}
	}
	if err != nil {
		return nil, err
	}
	defer ef.Close()
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, guestmodules.Name(d))
				}
			}
			// modpost lists them in no meaningful order; sort so builds
			// are reproducible.
			sort.Strings(deps)
			return deps, nil
		}
	}
	return nil, nil
}
