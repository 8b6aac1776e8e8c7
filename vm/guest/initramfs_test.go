package guest

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
)

func fakeEntries() []entry {
	return []entry{
		{Name: "init", Perm: 0o755, Data: []byte("#!agent")},
		{Name: "lib/modules/6.1.0-test/kernel/fs/overlay.ko", Perm: 0o644, Data: []byte("overlay")},
		{Name: "/lib/modules/6.1.0-test/cocoon.modules", Perm: 0o644, Data: []byte("kernel/fs/overlay.ko\n")},
		{Name: "tmp", Dir: true, Perm: 0o1777},
		{Name: "proc", Dir: true, Perm: 0o555},
		{Name: "bin/sh", Link: "busybox"},
	}
}

func TestInitramfsDeterministic(t *testing.T) {
	build := func(e []entry) []byte {
		t.Helper()
		var b bytes.Buffer
		if err := writeInitramfs(&b, e); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	a := build(fakeEntries())
	rev := fakeEntries()
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	if b := build(rev); !bytes.Equal(a, b) {
		t.Fatal("same entries in another order gave different bytes")
	}
	if b := build(fakeEntries()); !bytes.Equal(a, b) {
		t.Fatal("two builds gave different bytes")
	}
	changed := fakeEntries()
	changed[0].Data = []byte("#!other")
	if b := build(changed); bytes.Equal(a, b) {
		t.Fatal("different content gave the same bytes")
	}

	zr, err := zstd.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	type got struct {
		name string
		mode cpio.FileMode
		data string
	}
	var entries []got
	cr := cpio.NewReader(zr)
	for {
		h, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Guid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v, want 0 0 0", h.Name, h.Uid, h.Guid, h.ModTime.Unix())
		}
		data, _ := io.ReadAll(cr)
		if h.Linkname != "" {
			data = []byte("-> " + h.Linkname)
		}
		entries = append(entries, got{h.Name, h.Mode, string(data)})
	}
	want := []got{
		{"bin", cpio.TypeDir | 0o755, ""},
		{"bin/sh", cpio.TypeSymlink | 0o777, "-> busybox"},
		{"init", cpio.TypeReg | 0o755, "#!agent"},
		{"lib", cpio.TypeDir | 0o755, ""},
		{"lib/modules", cpio.TypeDir | 0o755, ""},
		{"lib/modules/6.1.0-test", cpio.TypeDir | 0o755, ""},
		{"lib/modules/6.1.0-test/cocoon.modules", cpio.TypeReg | 0o644, "kernel/fs/overlay.ko\n"},
		{"lib/modules/6.1.0-test/kernel", cpio.TypeDir | 0o755, ""},
		{"lib/modules/6.1.0-test/kernel/fs", cpio.TypeDir | 0o755, ""},
		{"lib/modules/6.1.0-test/kernel/fs/overlay.ko", cpio.TypeReg | 0o644, "overlay"},
		{"proc", cpio.TypeDir | 0o555, ""},
		{"tmp", cpio.TypeDir | 0o1777, ""},
	}
	if !reflect.DeepEqual(entries, want) {
		t.Fatalf("archive:\n%v\nwant\n%v", entries, want)
	}
}

func TestInitramfsRefusesConflicts(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		wantErr string
	}{
		{"duplicate file", []entry{{Name: "init"}, {Name: "/init"}}, "given twice"},
		{"file used as dir", []entry{{Name: "lib"}, {Name: "lib/x.ko"}}, "file and a directory"},
		{"link used as dir", []entry{{Name: "bin", Link: "usr/bin"}, {Name: "bin/sh", Link: "busybox"}}, "file and a directory"},
		{"empty name", []entry{{Name: "/"}}, "empty name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := writeInitramfs(io.Discard, tt.entries)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
