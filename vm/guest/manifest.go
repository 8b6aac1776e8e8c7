package guest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// File names inside an installed guest directory.
const (
	KernelFile    = "vmlinuz"
	InitramfsFile = "initramfs.cpio.zst"
	ManifestFile  = "manifest.json"
)

// DefaultDir is where `cocoon guest build` installs the guest.
const DefaultDir = "/var/lib/cocoon/guest"

// ManifestSchema is bumped when the manifest changes incompatibly.
const ManifestSchema = 1

// File is one installed or embedded file and its checksum.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest describes an installed guest. It holds no timestamps so that a
// rebuild from the same inputs writes the same manifest too.
type Manifest struct {
	Schema int `json:"schema"`
	// KernelVersion is the guest kernel's release (uname -r).
	KernelVersion        string `json:"kernelVersion"`
	KernelPackage        string `json:"kernelPackage"`
	KernelPackageVersion string `json:"kernelPackageVersion"`
	KernelPackageSHA256  string `json:"kernelPackageSHA256,omitempty"`

	Kernel    File `json:"kernel"`
	Initramfs File `json:"initramfs"`
	// Agent is the binary packed as /init.
	Agent        File   `json:"agent"`
	AgentVersion string `json:"agentVersion,omitempty"`
	// Busybox is the static busybox packed as /bin/busybox, with a /bin
	// link per applet in BusyboxApplets; nil when the guest has no tools.
	Busybox        *File    `json:"busybox,omitempty"`
	BusyboxApplets []string `json:"busyboxApplets,omitempty"`

	// Builtin lists the needed Config symbols the kernel has built in,
	// Modules the module files (relative to /lib/modules/<ver>/) in load
	// order, and Unavailable the optional ones this kernel lacks.
	Builtin     []string `json:"builtin"`
	Modules     []string `json:"modules"`
	Unavailable []string `json:"unavailable,omitempty"`

	// Dir is where Locate found the guest; not stored.
	Dir string `json:"-"`
}

// KernelPath is the kernel image to boot.
func (m *Manifest) KernelPath() string { return filepath.Join(m.Dir, m.Kernel.Name) }

// InitramfsPath is the initramfs to boot with the kernel.
func (m *Manifest) InitramfsPath() string { return filepath.Join(m.Dir, m.Initramfs.Name) }

// Locate reads dir's manifest and checks that the kernel and initramfs it
// names are there with the recorded size and sha256, so a VM is never booted
// from a half-written or tampered guest.
func Locate(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("guest: no guest installed in %s (run `cocoon guest build`): %w", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("guest: %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	if m.Schema != ManifestSchema {
		return nil, fmt.Errorf("guest: %s: schema %d, this cocoon reads %d (rebuild the guest)", dir, m.Schema, ManifestSchema)
	}
	m.Dir = dir
	for _, f := range []File{m.Kernel, m.Initramfs} {
		if err := verify(dir, f); err != nil {
			return nil, err
		}
	}
	return &m, nil
}

func verify(dir string, f File) error {
	// Names are plain file names; refuse anything that would leave dir.
	if f.Name == "" || filepath.Base(f.Name) != f.Name {
		return fmt.Errorf("guest: manifest in %s names bad file %q", dir, f.Name)
	}
	p := filepath.Join(dir, f.Name)
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("guest: %w", err)
	}
	if st.Size() != f.Size {
		return fmt.Errorf("guest: %s is %d bytes, manifest says %d", p, st.Size(), f.Size)
	}
	sum, err := fileSHA256(p)
	if err != nil {
		return fmt.Errorf("guest: %w", err)
	}
	if sum != f.SHA256 {
		return fmt.Errorf("guest: %s has sha256 %s, manifest says %s", p, sum, f.SHA256)
	}
	return nil
}
