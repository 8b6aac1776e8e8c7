package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
)

const fakeRelease = "6.1.0-9-test"

// fakeSource unpacks a tiny kernel package: a kernel "image", a config, a
// modules.dep and module files whose content is their own name.
type fakeSource struct {
	config string
	unpack int
}

func (s *fakeSource) Unpack(_ context.Context, dst string) (Package, error) {
	s.unpack++
	files := map[string]string{
		"boot/vmlinuz-" + fakeRelease: "bzImage",
		"boot/config-" + fakeRelease:  s.config,
		"lib/modules/" + fakeRelease + "/modules.dep": "kernel/virtio_ring.ko:\n" +
			"kernel/virtio.ko: kernel/virtio_ring.ko\n" +
			"kernel/virtio_pci.ko: kernel/virtio.ko kernel/virtio_ring.ko\n" +
			"kernel/overlay.ko:\nkernel/unused.ko:\n",
	}
	for _, m := range []string{"virtio_ring", "virtio", "virtio_pci", "overlay", "unused"} {
		files["lib/modules/"+fakeRelease+"/kernel/"+m+".ko"] = m
	}
	for name, body := range files {
		p := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return Package{}, err
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return Package{}, err
		}
	}
	return Package{Name: "linux-image-" + fakeRelease, Version: "6.1.1-1", SHA256: "abc"}, nil
}

var fakeNeeds = []Need{
	{Config: "DEVTMPFS", Why: "x"},
	{Config: "VIRTIO_PCI", Module: "virtio_pci", Why: "x"},
	{Config: "OVERLAY_FS", Module: "overlay", Why: "x"},
	{Config: "NET_9P", Module: "9pnet", Optional: true, Why: "x"},
}

const fakeConfig = "CONFIG_DEVTMPFS=y\nCONFIG_VIRTIO_PCI=m\nCONFIG_OVERLAY_FS=m\n"

func TestBuildInstallLocate(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("agent v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	busybox := filepath.Join(dir, "busybox")
	if err := os.WriteFile(busybox, fakeELF(t, false), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "lib", "guest")
	src := &fakeSource{config: fakeConfig}
	opts := Options{Out: out, Agent: agent, AgentVersion: "v1", Source: src, Needs: fakeNeeds, Busybox: busybox}

	m1, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if m1.KernelVersion != fakeRelease || m1.KernelPackageVersion != "6.1.1-1" || m1.AgentVersion != "v1" {
		t.Fatalf("manifest = %+v", m1)
	}
	wantMods := []string{"kernel/virtio_ring.ko", "kernel/virtio.ko", "kernel/virtio_pci.ko", "kernel/overlay.ko"}
	if !reflect.DeepEqual(m1.Modules, wantMods) || !reflect.DeepEqual(m1.Builtin, []string{"DEVTMPFS"}) ||
		!reflect.DeepEqual(m1.Unavailable, []string{"NET_9P"}) {
		t.Fatalf("modules %v builtin %v unavailable %v", m1.Modules, m1.Builtin, m1.Unavailable)
	}

	loc, err := Locate(out)
	if err != nil {
		t.Fatal(err)
	}
	if loc.Initramfs != m1.Initramfs || loc.KernelPath() != filepath.Join(out, KernelFile) {
		t.Fatalf("Locate = %+v", loc)
	}
	files := initramfsFiles(t, loc.InitramfsPath())
	if files["init"] != "agent v1" || files["lib/modules/"+fakeRelease+"/kernel/overlay.ko"] != "overlay" {
		t.Fatalf("initramfs files: %v", files)
	}
	if _, ok := files["lib/modules/"+fakeRelease+"/kernel/unused.ko"]; ok {
		t.Fatal("a module nobody needs was packed")
	}
	if files["bin/busybox"] != string(fakeELF(t, false)) || files["bin/sh"] != "-> busybox" || files["bin/ip"] != "-> busybox" ||
		!strings.HasPrefix(files["etc/passwd"], "root:x:0:0:") {
		t.Fatalf("busybox and its links: busybox %d bytes, sh %q, ip %q", len(files["bin/busybox"]), files["bin/sh"], files["bin/ip"])
	}
	if loc.Busybox == nil || loc.Busybox.Name != "/bin/busybox" || loc.Busybox.SHA256 != sha256Hex(fakeELF(t, false)) ||
		!reflect.DeepEqual(loc.BusyboxApplets, BusyboxApplets) {
		t.Fatalf("manifest busybox %+v applets %v", loc.Busybox, loc.BusyboxApplets)
	}
	if got := files["lib/modules/"+fakeRelease+"/cocoon.modules"]; !strings.HasSuffix(got, strings.Join(wantMods, "\n")+"\n") {
		t.Fatalf("load order file:\n%s", got)
	}

	// Rebuilding over an installed guest: same inputs, same bytes, and
	// nothing left beside it.
	m2, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Initramfs != m1.Initramfs || m2.Kernel != m1.Kernel {
		t.Fatalf("rebuild differs: %+v vs %+v", m2.Initramfs, m1.Initramfs)
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Fatalf("left beside the guest: %v", ents)
	}

	// A new agent replaces the installed guest.
	if err := os.WriteFile(agent, []byte("agent v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	m3, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if loc, err := Locate(out); err != nil || loc.Initramfs == m1.Initramfs || loc.Agent != m3.Agent {
		t.Fatalf("after new agent Locate = %+v, %v", loc, err)
	}
}

func TestLocateRefuses(t *testing.T) {
	tests := []struct {
		name    string
		break_  func(dir string) error
		wantErr string
	}{
		{"nothing installed", func(dir string) error { return os.RemoveAll(dir) }, "no guest installed"},
		{"tampered initramfs", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, InitramfsFile), []byte("not the initramfs at all, longer"), 0o644)
		}, "initramfs.cpio.zst is"},
		{"same size, other bytes", func(dir string) error {
			p := filepath.Join(dir, KernelFile)
			b, _ := os.ReadFile(p)
			b[0] ^= 0xff
			return os.WriteFile(p, b, 0o644)
		}, "has sha256"},
		{"missing kernel", func(dir string) error { return os.Remove(filepath.Join(dir, KernelFile)) }, "no such file"},
		{"other schema", func(dir string) error {
			p := filepath.Join(dir, ManifestFile)
			b, _ := os.ReadFile(p)
			return os.WriteFile(p, bytes.Replace(b, []byte(`"schema": 1`), []byte(`"schema": 99`), 1), 0o644)
		}, "schema 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			agent := writeFakeAgent(t, dir)
			out := filepath.Join(dir, "guest")
			_, err := Build(context.Background(), Options{Out: out, Agent: agent, Source: &fakeSource{config: fakeConfig}, Needs: fakeNeeds})
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.break_(out); err != nil {
				t.Fatal(err)
			}
			if _, err := Locate(out); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Locate error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestBuildFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	agent := writeFakeAgent(t, dir)
	out := filepath.Join(dir, "guest")
	_, err := Build(context.Background(), Options{Out: out, Agent: agent,
		Source: &fakeSource{config: "CONFIG_DEVTMPFS=y\n"}, Needs: fakeNeeds})
	if err == nil || !strings.Contains(err.Error(), "CONFIG_VIRTIO_PCI") {
		t.Fatalf("error = %v, want the missing symbol named", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("failed build left %v", ents)
	}
}

// writeFakeAgent writes an agent "binary" into dir and returns its path.
func writeFakeAgent(t *testing.T, dir string) string {
	t.Helper()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	return agent
}

// initramfsFiles reads back the zstd'd cpio as name -> content.
func initramfsFiles(t *testing.T, p string) map[string]string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	files := map[string]string{}
	cr := cpio.NewReader(zr)
	for {
		h, err := cr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Mode&^cpio.ModePerm == cpio.TypeSymlink {
			files[h.Name] = "-> " + h.Linkname
			continue
		}
		b, _ := io.ReadAll(cr)
		files[h.Name] = string(b)
	}
}

func TestBuildBusybox(t *testing.T) {
	tests := []struct {
		name    string
		content []byte // nil: no file at all
		wantErr string
	}{
		{"static", fakeELF(t, false), ""},
		{"dynamically linked", fakeELF(t, true), "dynamically linked"},
		{"not an executable", []byte("#!/bin/sh\n"), "not an ELF executable"},
		{"missing", nil, "install busybox-static"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			agent := writeFakeAgent(t, dir)
			busybox := filepath.Join(dir, "busybox")
			if tt.content != nil {
				if err := os.WriteFile(busybox, tt.content, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			out := filepath.Join(dir, "guest")
			m, err := Build(context.Background(), Options{Out: out, Agent: agent, Busybox: busybox,
				Source: &fakeSource{config: fakeConfig}, Needs: fakeNeeds})
			if tt.wantErr == "" {
				if err != nil || m.Busybox == nil {
					t.Fatalf("Build = %+v, %v", m, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want %q", err, tt.wantErr)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("a refused build installed a guest: %v", err)
			}
		})
	}
}

// fakeELF is the smallest ELF executable debug/elf reads: a header and, when
// dynamic, one PT_INTERP program header naming a loader.
func fakeELF(t *testing.T, dynamic bool) []byte {
	t.Helper()
	hdr := elf.Header64{
		Ident:     [elf.EI_NIDENT]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Ehsize:    64,
		Phentsize: 56,
	}
	interp := "/lib64/ld-linux-x86-64.so.2\x00"
	if dynamic {
		hdr.Phoff, hdr.Phnum = 64, 1
	}
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, hdr); err != nil {
		t.Fatal(err)
	}
	if dynamic {
		prog := elf.Prog64{Type: uint32(elf.PT_INTERP), Off: 64 + 56, Filesz: uint64(len(interp)), Memsz: uint64(len(interp))}
		if err := binary.Write(&b, binary.LittleEndian, prog); err != nil {
			t.Fatal(err)
		}
		b.WriteString(interp)
	}
	return b.Bytes()
}
