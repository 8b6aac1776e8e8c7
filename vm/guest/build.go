// Package guest builds and finds the guest every pod VM boots: Debian's
// cloud kernel plus an initramfs holding the agent as /init and only the
// kernel modules the agent needs.
package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/api/guestmodules"
)

// Options for Build.
type Options struct {
	// Out is the directory the guest is installed into (DefaultDir if "").
	Out string
	// Agent is the agent binary, packed as /init.
	Agent string
	// AgentVersion is recorded in the manifest when set.
	AgentVersion string
	// Busybox is a static busybox packed as /bin/busybox with /bin links
	// for BusyboxApplets (DefaultBusybox from the CLI); "" leaves it out.
	Busybox string
	// Source provides the kernel package (a Debian with defaults if nil).
	Source Source
	// Needs is what the kernel must provide (the package's Needs if nil).
	Needs []Need
}

// Build unpacks the kernel package, writes the initramfs and installs
// kernel, initramfs and manifest into opts.Out, replacing what was there in
// one rename. Same package and agent give byte-identical files.
func Build(ctx context.Context, opts Options) (*Manifest, error) {
	if opts.Out == "" {
		opts.Out = DefaultDir
	}
	if opts.Source == nil {
		opts.Source = &Debian{}
	}
	if opts.Needs == nil {
		opts.Needs = Needs
	}
	agent, err := os.ReadFile(opts.Agent)
	if err != nil {
		return nil, fmt.Errorf("guest: agent: %w", err)
	}

	work, err := os.MkdirTemp("", "cocoon-guest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	pkg, err := opts.Source.Unpack(ctx, root)
	if err != nil {
		return nil, err
	}
	kver, err := kernelVersion(root)
	if err != nil {
		return nil, err
	}
	m := &Manifest{
		Schema:               ManifestSchema,
		KernelVersion:        kver,
		KernelPackage:        pkg.Name,
		KernelPackageVersion: pkg.Version,
		KernelPackageSHA256:  pkg.SHA256,
		Agent:                File{Name: "/init", Size: int64(len(agent)), SHA256: sha256Hex(agent)},
		AgentVersion:         opts.AgentVersion,
	}

	cfgFile, err := os.Open(filepath.Join(root, "boot", "config-"+kver))
	if err != nil {
		return nil, fmt.Errorf("guest: kernel config: %w", err)
	}
	cfg, err := ParseConfig(cfgFile)
	cfgFile.Close()
	if err != nil {
		return nil, err
	}
	plan, err := PlanFor(opts.Needs, cfg)
	if err != nil {
		return nil, err
	}
	m.Builtin, m.Unavailable = plan.Builtin, plan.Unavailable

	modDir, err := modulesDir(root, kver)
	if err != nil {
		return nil, err
	}
	graph, err := loadDepGraph(modDir)
	if err != nil {
		return nil, err
	}
	paths, err := graph.order(plan.Modules)
	if err != nil {
		return nil, err
	}

	entries := append([]entry(nil), mountPoints...)
	entries = append(entries, entry{Name: "init", Perm: 0o755, Data: agent})
	if opts.Busybox != "" {
		bb, bbEntries, err := busyboxEntries(opts.Busybox)
		if err != nil {
			return nil, err
		}
		m.Busybox, m.BusyboxApplets = bb, BusyboxApplets
		entries = append(entries, bbEntries...)
	}
	inGuest := guestmodules.Dir(kver) + "/"
	m.Modules = []string{}
	for _, p := range paths {
		data, err := readModule(filepath.Join(modDir, filepath.FromSlash(p)))
		if err != nil {
			return nil, fmt.Errorf("guest: module %s: %w", p, err)
		}
		// Stored decompressed, so the list names the plain .ko.
		p = strings.TrimSuffix(strings.TrimSuffix(p, ".xz"), ".zst")
		m.Modules = append(m.Modules, p)
		entries = append(entries, entry{Name: inGuest + p, Perm: 0o644, Data: data})
	}
	entries = append(entries, entry{Name: inGuest + guestmodules.ListName, Perm: 0o644, Data: guestmodules.Encode(m.Modules)})

	// Stage beside the destination so the final rename stays on one
	// filesystem.
	parent := filepath.Dir(filepath.Clean(opts.Out))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(opts.Out)+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil {
		return nil, err
	}

	var initrd bytes.Buffer
	if err := writeInitramfs(&initrd, entries); err != nil {
		return nil, err
	}
	if m.Initramfs, err = writeFile(stage, InitramfsFile, bytes.NewReader(initrd.Bytes())); err != nil {
		return nil, err
	}
	kernel, err := os.Open(filepath.Join(root, "boot", "vmlinuz-"+kver))
	if err != nil {
		return nil, fmt.Errorf("guest: kernel image: %w", err)
	}
	m.Kernel, err = writeFile(stage, KernelFile, kernel)
	kernel.Close()
	if err != nil {
		return nil, err
	}
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if _, err := writeFile(stage, ManifestFile, bytes.NewReader(append(js, '\n'))); err != nil {
		return nil, err
	}
	if err := install(stage, opts.Out); err != nil {
		return nil, err
	}
	m.Dir = opts.Out
	return m, nil
}

// kernelVersion finds the single /boot/vmlinuz-<ver> in the unpacked tree.
func kernelVersion(root string) (string, error) {
	found, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return "", err
	}
	if len(found) != 1 {
		return "", fmt.Errorf("guest: kernel package has %d /boot/vmlinuz-* files, want 1", len(found))
	}
	return strings.TrimPrefix(filepath.Base(found[0]), "vmlinuz-"), nil
}

// modulesDir is /lib/modules/<ver>, or /usr/lib/modules/<ver> for packages
// built for a merged /usr.
func modulesDir(root, kver string) (string, error) {
	for _, d := range []string{"lib", "usr/lib"} {
		p := filepath.Join(root, d, "modules", kver)
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("guest: kernel package has no modules directory for %s", kver)
}

// writeFile writes r to dir/name, synced, and returns its File record.
func writeFile(dir, name string, r io.Reader) (File, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return File{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return File{}, fmt.Errorf("guest: write %s: %w", name, err)
	}
	return File{Name: name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// install puts the staged directory at out. An existing guest is swapped
// out in one renameat2(RENAME_EXCHANGE), so readers see the old guest or
// the new one, never a mix; the old one is then removed from stage's name.
func install(stage, out string) error {
	st, err := os.Lstat(out)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.Rename(stage, out)
	case err != nil:
		return err
	case !st.IsDir():
		return fmt.Errorf("guest: %s exists and is not a directory", out)
	}
	err = unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, out, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// Filesystems without RENAME_EXCHANGE: move the old guest aside
		// first, accepting a moment with no guest at out.
		old := stage + ".old"
		if err := os.Rename(out, old); err != nil {
			return err
		}
		defer os.RemoveAll(old)
		return os.Rename(stage, out)
	}
	if err != nil {
		return fmt.Errorf("guest: install %s: %w", out, err)
	}
	return nil // stage now holds the old guest; Build's defer removes it
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
