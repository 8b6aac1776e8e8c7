package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// epoch stamps every config, history entry and tar header so that the same
// inputs always give the same digests.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// builder turns catalog entries into images. The base layer (busybox, its
// applet links and /etc) is built once and shared by every image.
type builder struct {
	goTool  string
	base    v1.Layer
	helpers map[string][]byte
}

func newBuilder(busybox, shell, goTool string) (*builder, error) {
	b := &builder{goTool: goTool, helpers: map[string][]byte{}}
	files, err := baseFiles(busybox, shell)
	if err != nil {
		return nil, err
	}
	if b.base, err = b.layer(files); err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	return b, nil
}

// baseFiles lays out the busybox root filesystem: the binary, every applet
// as a hard link at the path busybox itself reports, and a minimal /etc.
// A non-empty shell replaces busybox's sh and ash (see shell.go).
func baseFiles(busybox, shell string) ([]file, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	files := []file{
		{Path: "bin/busybox", Mode: 0o755, Data: string(bin)},
		{Path: "etc/passwd", Data: basePasswd},
		{Path: "etc/group", Data: baseGroup},
		{Path: "root", Dir: true, Mode: 0o700},
		{Path: "tmp", Dir: true, Mode: 0o1777},
		{Path: "var/www", Dir: true, UID: 33, GID: 33},
	}
	for _, d := range []string{"dev", "home", "proc", "sys", "usr/local/bin", "var/run", "var/spool/mail"} {
		files = append(files, file{Path: d, Dir: true})
	}
	applets := map[string]bool{}
	shellLinks := map[string]bool{}
	if shell != "" {
		sf, err := shellFiles(shell)
		if err != nil {
			return nil, err
		}
		files = append(files, sf...)
		for _, p := range shellApplets {
			shellLinks[p] = true
			files = append(files, file{Path: p, HardLink: shellBinary})
		}
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "bin/busybox" {
			continue
		}
		if path.IsAbs(p) || strings.Contains(p, "..") {
			return nil, fmt.Errorf("busybox lists unexpected applet path %q", p)
		}
		applets[path.Base(p)] = true
		if !shellLinks[p] {
			files = append(files, file{Path: p, HardLink: "bin/busybox"})
		}
	}
	// critest runs applets this busybox build lacks; scripts fill in.
	for _, s := range fallbackScripts {
		if !applets[path.Base(s.Path)] {
			files = append(files, s)
		}
	}
	return files, nil
}

// layer writes files as a gzip-compressed tar with fixed metadata and a
// stable entry order.
func (b *builder) layer(files []file) (v1.Layer, error) {
	entries := map[string]file{}
	for _, f := range files {
		p := path.Clean(strings.TrimPrefix(f.Path, "/"))
		if p == "." || strings.HasPrefix(p, "..") {
			return nil, fmt.Errorf("bad layer path %q", f.Path)
		}
		if _, dup := entries[p]; dup {
			return nil, fmt.Errorf("duplicate layer path %q", p)
		}
		f.Path = p
		if f.Helper != "" {
			data, err := b.helper(f.Helper)
			if err != nil {
				return nil, err
			}
			f.Data = string(data)
		}
		entries[p] = f
	}
	// Parents must exist before their children are extracted.
	for p := range entries {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = file{Path: d, Dir: true}
			}
		}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	// Lexical order puts directories before their contents; hard links go
	// last so their targets are already there.
	sort.Slice(paths, func(i, j int) bool {
		li, lj := entries[paths[i]].HardLink != "", entries[paths[j]].HardLink != ""
		if li != lj {
			return lj
		}
		return paths[i] < paths[j]
	})

	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, p := range paths {
		if err := writeEntry(tw, entries[p]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	blob := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(blob)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

func writeEntry(tw *tar.Writer, f file) error {
	h := &tar.Header{
		Name:    f.Path,
		Uid:     f.UID,
		Gid:     f.GID,
		ModTime: epoch,
		Mode:    f.Mode,
		Format:  tar.FormatPAX,
	}
	switch {
	case f.Dir:
		h.Typeflag, h.Name = tar.TypeDir, f.Path+"/"
		if h.Mode == 0 {
			h.Mode = 0o755
		}
	case f.Link != "":
		h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
	case f.HardLink != "":
		h.Typeflag, h.Linkname = tar.TypeLink, f.HardLink
		if h.Mode == 0 {
			h.Mode = 0o755
		}
	default:
		h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
	}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("tar %s: %w", f.Path, err)
	}
	if h.Typeflag == tar.TypeReg {
		if _, err := io.WriteString(tw, f.Data); err != nil {
			return fmt.Errorf("tar %s: %w", f.Path, err)
		}
	}
	return nil
}

// image assembles the OCI image for one catalog entry.
func (b *builder) image(spec imageSpec) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	adds := []mutate.Addendum{{
		Layer:     b.base,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "cocoon-test-images: busybox base"},
	}}
	if len(spec.Files) > 0 {
		l, err := b.layer(spec.Files)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", spec.Names[0], err)
		}
		adds = append(adds, mutate.Addendum{
			Layer:     l,
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "cocoon-test-images: " + spec.Desc},
		})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = runtime.GOARCH, "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		User:       spec.User,
		Entrypoint: spec.Entrypoint,
		Cmd:        spec.Cmd,
		Env:        append([]string{defaultPath}, spec.Env...),
		WorkingDir: spec.WorkingDir,
		Labels:     map[string]string{"org.opencontainers.image.description": "cocoon critest stand-in: " + spec.Desc},
	}
	if len(spec.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range spec.Ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	return mutate.ConfigFile(img, cf)
}

// buildAll builds every catalog entry, in catalog order.
func (b *builder) buildAll(specs []imageSpec) ([]v1.Image, error) {
	imgs := make([]v1.Image, len(specs))
	for i, s := range specs {
		img, err := b.image(s)
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", s.Names[0], err)
		}
		imgs[i] = img
	}
	return imgs, nil
}

const basePasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
`

const baseGroup = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
`
