package hostcheck

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func (h *Host) checkRoot() Result {
	if h.Euid != 0 {
		return problem(Fail, "root", "run as root (sudo cocoon check)",
			"running as uid %d: cocoond needs root for netns, taps, mounts and /dev/kvm", h.Euid)
	}
	return ok("root", "running as root")
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (h *Host) checkNetns() Result {
	const name = "network namespaces"
	if err := h.TryNetns(); err != nil {
		return problem(Fail, name, "run as root with CAP_SYS_ADMIN on a kernel with CONFIG_NET_NS",
			"cannot create a network namespace: %v", err)
	}
	return ok(name, "created and removed a throw-away netns")
}

func (h *Host) checkTun() Result {
	const name = "/dev/net/tun"
	path := filepath.Join(h.DevDir, "net", "tun")
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return problem(Fail, name, "modprobe tun", "cannot open %s (pod taps need it): %v", path, err)
	}
	f.Close()
	return ok(name, "%s opens", path)
}

// checkOverlay is a warning: image storage falls back to vfs.
func (h *Host) checkOverlay(driver string) Result {
	const name = "overlayfs"
	if driver != "overlay" {
		return ok(name, "not needed (image.driver = %s)", driver)
	}
	if found, err := fileHasLine(filepath.Join(h.ProcDir, "filesystems"), func(l string) bool {
		f := strings.Fields(l)
		return len(f) > 0 && f[len(f)-1] == "overlay"
	}); err == nil && found {
		return ok(name, "overlay in /proc/filesystems")
	}
	isOverlayModule := func(l string) bool {
		mod, _, _ := strings.Cut(l, ":")
		return filepath.Base(mod) == "overlay.ko" || strings.HasPrefix(filepath.Base(mod), "overlay.ko.")
	}
	for _, f := range []string{"modules.builtin", "modules.dep"} {
		if found, err := fileHasLine(filepath.Join(h.ModulesDir, f), isOverlayModule); err == nil && found {
			return ok(name, "overlay module available (%s loads it on first mount)", f)
		}
	}
	return problem(Warn, name, "modprobe overlay (or a kernel with CONFIG_OVERLAY_FS)",
		"overlay is neither loaded nor a module of this kernel: images fall back to vfs (slower, full copies)")
}

func fileHasLine(path string, match func(string) bool) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(strings.Split(string(data), "\n"), match), nil
}

// checkVsock is a warning: QEMU falls back to a virtio-serial agent channel.
func (h *Host) checkVsock() Result {
	const name = "/dev/vhost-vsock"
	path := filepath.Join(h.DevDir, "vhost-vsock")
	if _, err := os.Stat(path); err != nil {
		return problem(Warn, name, "modprobe vhost_vsock",
			"%s: QEMU VMs reach the agent over virtio-serial instead", describeMissing(path, err))
	}
	return ok(name, "present: QEMU VMs reach the agent over vhost-vsock")
}

// checkKVM is a warning: QEMU runs guests with TCG without it. Whether KVM
// really boots the guest only the boot probe can tell.
func (h *Host) checkKVM() Result {
	const name = "/dev/kvm"
	if err := h.openKVM(); err != nil {
		return problem(Warn, name, "modprobe kvm_intel (or kvm_amd) and enable virtualization in firmware or the parent hypervisor",
			"%v: QEMU falls back to TCG (slow), Cloud Hypervisor cannot run", err)
	}
	return ok(name, "opens (the boot probe proves whether guests run under it)")
}

func describeMissing(path string, err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return path + " does not exist"
	}
	return err.Error()
}
