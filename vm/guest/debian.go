package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultKernelPackage is Debian's metapackage for the smallest kernel meant
// for VMs; it depends on the real linux-image-<abi>-cloud-amd64 package.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// DefaultCacheDir keeps downloaded .deb files between builds.
const DefaultCacheDir = "/var/cache/cocoon/guest"

// Package says which Debian package a Source unpacked.
type Package struct {
	Name    string // e.g. linux-image-6.1.0-56-cloud-amd64
	Version string // e.g. 6.1.192-2
	SHA256  string // of the .deb
}

// Source unpacks a kernel package's file tree into dst.
type Source interface {
	Unpack(ctx context.Context, dst string) (Package, error)
}

// Runner runs a command in dir and returns its standard output; a seam so
// tests can stand in for apt and dpkg.
type Runner interface {
	Output(ctx context.Context, dir, name string, args ...string) ([]byte, error)
}

// ExecRunner runs real commands.
type ExecRunner struct{}

// Output runs name with args in dir; the error carries the command's stderr.
func (ExecRunner) Output(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Debian fetches a kernel package with apt (from the cache when it is
// there already) and unpacks it with dpkg-deb.
type Debian struct {
	Package  string // DefaultKernelPackage when empty
	CacheDir string // DefaultCacheDir when empty
	Run      Runner // ExecRunner when nil
}

// Unpack implements Source.
func (d *Debian) Unpack(ctx context.Context, dst string) (Package, error) {
	pkg, deb, err := d.Fetch(ctx)
	if err != nil {
		return Package{}, err
	}
	if _, err := d.runner().Output(ctx, "", "dpkg-deb", "-x", deb, dst); err != nil {
		return Package{}, fmt.Errorf("guest: unpack %s: %w", filepath.Base(deb), err)
	}
	return pkg, nil
}

// Fetch resolves the package to a real kernel package and returns it and
// the path of its .deb in the cache, downloading it only when the cache
// lacks it or holds a file whose checksum does not match apt's index.
func (d *Debian) Fetch(ctx context.Context) (Package, string, error) {
	name := d.Package
	if name == "" {
		name = DefaultKernelPackage
	}
	info, err := d.show(ctx, name, true)
	if err != nil {
		return Package{}, "", err
	}
	// A metapackage names the real image among its dependencies; follow
	// it so the cache and the manifest hold the versioned package.
	if real := kernelDep(info["Depends"]); real != "" && real != name {
		if info, err = d.show(ctx, real, false); err != nil {
			return Package{}, "", err
		}
	}
	pkg := Package{Name: info["Package"], Version: info["Version"], SHA256: info["SHA256"]}
	if pkg.Name == "" || pkg.Version == "" || info["Architecture"] == "" {
		return Package{}, "", fmt.Errorf("guest: apt-cache show %s: no Package, Version or Architecture", name)
	}
	cache := d.CacheDir
	if cache == "" {
		cache = DefaultCacheDir
	}
	// apt-get download's own file name, with the epoch colon escaped.
	file := filepath.Join(cache, fmt.Sprintf("%s_%s_%s.deb", pkg.Name,
		strings.ReplaceAll(pkg.Version, ":", "%3a"), info["Architecture"]))
	if sum, err := fileSHA256(file); err == nil && (pkg.SHA256 == "" || sum == pkg.SHA256) {
		pkg.SHA256 = sum
		return pkg, file, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Package{}, "", err
	}
	// Download into a private directory and rename, so an interrupted
	// download never leaves a half file under the cached name.
	tmp, err := os.MkdirTemp(cache, ".download-")
	if err != nil {
		return Package{}, "", err
	}
	defer os.RemoveAll(tmp)
	// Root's downloads would otherwise warn that _apt cannot write here.
	if _, err := d.runner().Output(ctx, tmp, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
		pkg.Name+"="+pkg.Version); err != nil {
		return Package{}, "", fmt.Errorf("guest: download %s: %w", pkg.Name, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return Package{}, "", fmt.Errorf("guest: download %s: got %d .deb files, want 1", pkg.Name, len(debs))
	}
	got := debs[0]
	sum, err := fileSHA256(got)
	if err != nil {
		return Package{}, "", fmt.Errorf("guest: download %s: %w", pkg.Name, err)
	}
	if pkg.SHA256 != "" && sum != pkg.SHA256 {
		return Package{}, "", fmt.Errorf("guest: download %s: sha256 %s, apt index says %s", pkg.Name, sum, pkg.SHA256)
	}
	pkg.SHA256 = sum
	if err := os.Rename(got, file); err != nil {
		return Package{}, "", err
	}
	return pkg, file, nil
}

// show returns the candidate version's fields from apt-cache. When the
// package is unknown and update is set, it refreshes apt's lists once.
func (d *Debian) show(ctx context.Context, name string, update bool) (map[string]string, error) {
	out, err := d.runner().Output(ctx, "", "apt-cache", "show", "--no-all-versions", name)
	info := parseStanza(out)
	if (err != nil || info["Package"] == "") && update {
		if _, uerr := d.runner().Output(ctx, "", "apt-get", "update", "-q"); uerr != nil {
			return nil, fmt.Errorf("guest: %s not in apt's lists and apt-get update failed: %w", name, uerr)
		}
		out, err = d.runner().Output(ctx, "", "apt-cache", "show", "--no-all-versions", name)
		info = parseStanza(out)
	}
	if err != nil {
		return nil, fmt.Errorf("guest: %w", err)
	}
	if info["Package"] == "" {
		return nil, fmt.Errorf("guest: package %s not found", name)
	}
	return info, nil
}

func (d *Debian) runner() Runner {
	if d.Run == nil {
		return ExecRunner{}
	}
	return d.Run
}

// parseStanza reads the first deb822 stanza; continuation lines (starting
// with a space) are dropped, as no field used here spans lines.
func parseStanza(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "" {
			if len(m) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// kernelDep picks the first linux-image-* package from a Depends field,
// taking the first of any alternatives and dropping version constraints.
func kernelDep(depends string) string {
	for _, dep := range strings.Split(depends, ",") {
		alt, _, _ := strings.Cut(dep, "|")
		name := strings.TrimSpace(alt)
		if i := strings.IndexAny(name, " ("); i >= 0 {
			name = name[:i]
		}
		name, _, _ = strings.Cut(name, ":")
		if strings.HasPrefix(name, "linux-image-") {
			return name
		}
	}
	return ""
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
