package guest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

const fakeModulesDep = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/loop/a.ko: kernel/loop/b.ko
kernel/loop/b.ko: kernel/loop/a.ko
kernel/broken.ko: kernel/gone.ko
`

func TestParseModulesDepAndOrder(t *testing.T) {
	g, err := parseModulesDep(strings.NewReader(fakeModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	if got := g["virtio_rng"].Path; got != "kernel/drivers/char/hw_random/virtio-rng.ko" {
		t.Fatalf("virtio_rng path = %q (names must be normalised)", got)
	}
	tests := []struct {
		name    string
		want    []string // module names in load order
		order   []string
		wantErr string
	}{
		{name: "no deps", want: []string{"overlay"}, order: []string{"overlay"}},
		{
			name:  "deps first, each once",
			want:  []string{"virtio_pci", "virtio_rng"},
			order: []string{"virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci", "virtio_rng"},
		},
		{
			name:  "transitive chain",
			want:  []string{"virtio_net"},
			order: []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net"},
		},
		{
			name:  "asking for a dep later changes nothing",
			want:  []string{"virtio_net", "failover", "overlay"},
			order: []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "overlay"},
		},
		{name: "unknown module", want: []string{"nosuch"}, wantErr: "module nosuch not found"},
		{name: "missing dep names its user", want: []string{"broken"}, wantErr: "module gone (needed by broken) not found"},
		{name: "cycle", want: []string{"a"}, wantErr: "cycle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			paths, err := g.order(tt.want)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("order error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range paths {
				names = append(names, nameOf(p))
			}
			if !reflect.DeepEqual(names, tt.order) {
				t.Fatalf("order = %v, want %v", names, tt.order)
			}
			// Whatever the exact order, every dependency loads first.
			seen := map[string]bool{}
			for _, n := range names {
				for _, d := range g[n].Deps {
					if !seen[d] {
						t.Errorf("%s comes before its dependency %s", n, d)
					}
				}
				seen[n] = true
			}
		})
	}
}

func TestParseModulesDepMalformed(t *testing.T) {
	if _, err := parseModulesDep(strings.NewReader("kernel/a.ko kernel/b.ko\n")); err == nil {
		t.Fatal("line without ':' accepted")
	}
}

// TestLoadDepGraphFromModinfo covers Debian's case: no modules.dep, so
// dependencies come from each module's .modinfo, compressed or not.
func TestLoadDepGraphFromModinfo(t *testing.T) {
	dir := t.TempDir()
	writeKO(t, dir, "kernel/virtio_ring.ko", "")
	writeKO(t, dir, "kernel/virtio.ko.xz", "virtio_ring")
	writeKO(t, dir, "kernel/virtio-rng.ko", "virtio_ring,virtio")
	if err := os.WriteFile(filepath.Join(dir, "modules.order"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := loadDepGraph(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := depGraph{
		"virtio_ring": {Path: "kernel/virtio_ring.ko"},
		"virtio":      {Path: "kernel/virtio.ko.xz", Deps: []string{"virtio_ring"}},
		"virtio_rng":  {Path: "kernel/virtio-rng.ko", Deps: []string{"virtio", "virtio_ring"}},
	}
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("graph = %+v\nwant    %+v", g, want)
	}
	data, err := readModule(filepath.Join(dir, "kernel/virtio.ko.xz"))
	if err != nil || !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		t.Fatalf("readModule(.ko.xz) = %.8q, %v; want the ELF bytes", data, err)
	}
}

func nameOf(p string) string {
	base := filepath.Base(p)
	return strings.ReplaceAll(strings.TrimSuffix(base, ".ko"), "-", "_")
}

// writeKO writes a minimal relocatable ELF whose only content is a
// .modinfo section, xz-compressed when rel ends in .xz.
func writeKO(t *testing.T, dir, rel, depends string) {
	t.Helper()
	data := fakeKO("depends=" + depends + "\x00name=x\x00")
	if strings.HasSuffix(rel, ".xz") {
		var b bytes.Buffer
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil { // flushes the xz stream
			t.Fatal(err)
		}
		data = b.Bytes()
	}
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeKO lays out: ELF header, .modinfo bytes, .shstrtab, section headers.
func fakeKO(modinfo string) []byte {
	const ehsize, shentsize = 64, 64
	shstrtab := "\x00.modinfo\x00.shstrtab\x00"
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(modinfo))
	shOff := strOff + uint64(len(shstrtab))
	var b bytes.Buffer
	h := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	mustWrite(&b, h)
	b.WriteString(modinfo)
	b.WriteString(shstrtab)
	for _, s := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Off: infoOff, Size: uint64(len(modinfo)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstrtab)), Addralign: 1},
	} {
		mustWrite(&b, s)
	}
	return b.Bytes()
}

// mustWrite encodes a fixed-size ELF struct; it fails only on a type
// binary.Write cannot encode, a bug in this file.
func mustWrite(b *bytes.Buffer, v any) {
	if err := binary.Write(b, binary.LittleEndian, v); err != nil {
		panic(err)
	}
}
