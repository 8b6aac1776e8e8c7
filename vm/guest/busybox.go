package guest

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
)

// DefaultBusybox is Debian's busybox-static (package busybox-static): the
// operator's tools in the guest root, for `cocoon debug-console`.
const DefaultBusybox = "/bin/busybox"

// busyboxPath is where busybox lands in the guest; PATH of the debug console.
const busyboxPath = "bin/busybox"

// BusyboxApplets get a /bin symlink each; every other applet is one
// `busybox <applet>` away.
var BusyboxApplets = []string{"cat", "df", "dmesg", "free", "grep", "ip", "kill", "ls", "mount", "ps", "sh", "top", "umount"}

// busyboxEntries reads a static busybox and returns its manifest record and
// the initramfs entries: the binary, one relative symlink per applet, and
// root's passwd and group lines so ps, ls and id show names.
func busyboxEntries(path string) (*File, []entry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("guest: busybox: %w (install busybox-static, or pass --busybox \"\" to leave the tools out)", err)
	}
	if err := checkStatic(path, data); err != nil {
		return nil, nil, err
	}
	entries := []entry{
		{Name: busyboxPath, Perm: 0o755, Data: data},
		{Name: "etc/passwd", Perm: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Name: "etc/group", Perm: 0o644, Data: []byte("root:x:0:\n")},
	}
	for _, applet := range BusyboxApplets {
		entries = append(entries, entry{Name: "bin/" + applet, Link: "busybox"})
	}
	return &File{Name: "/" + busyboxPath, Size: int64(len(data)), SHA256: sha256Hex(data)}, entries, nil
}

// checkStatic refuses anything but a statically linked ELF executable: the
// guest has no dynamic loader and no libc, so a dynamic busybox (Debian's
// package busybox, not busybox-static) would fail there with a bare ENOENT.
func checkStatic(path string, data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("guest: busybox %s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("guest: busybox %s is dynamically linked; the guest has no libc (install busybox-static)", path)
		}
	}
	return nil
}
