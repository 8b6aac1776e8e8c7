// Command testinit stands in for cocoon-agent in the boot test: as PID 1 it
// mounts the basics, loads the guest's modules with agent/kmod, checks that
// the virtio devices the test attached showed up, says so on the console
// and on the agent port, and powers the VM off.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/agent/kmod"
)

const portName = "cocoon.agent"

func main() {
	// stdio is the kernel's /dev/console (ttyS0): the test reads it.
	if err := run(); err != nil {
		fmt.Printf("COCOON-GUEST-FAIL %v\n", err)
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {} // PID 1 must not exit, or the kernel panics
}

func run() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	start := time.Now()
	if err := kmod.Load("/"); err != nil {
		return err
	}
	mods, err := kmod.Modules("/")
	if err != nil {
		return err
	}
	loadTime := time.Since(start)

	// virtio-serial ports arrive from the host over a control queue after
	// the driver binds, so give them a moment.
	port, err := waitFor(5*time.Second, findPort)
	if err != nil {
		return err
	}
	checks := map[string]func() (string, error){
		"virtio-blk":  exists("/sys/block/vda"),
		"virtio-net":  exists("/sys/class/net/eth0"),
		"vsock":       exists("/sys/module/vmw_vsock_virtio_transport"),
		"overlay":     hasFS("overlay"),
		"virtiofs":    hasFS("virtiofs"),
		"fuse":        hasFS("fuse"),
		"devtmpfs":    exists(port),
		"console-dev": exists("/dev/console"),
	}
	for name, check := range checks {
		if _, err := waitFor(5*time.Second, check); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if err := sayHello(port); err != nil {
		return err
	}
	fmt.Printf("COCOON-GUEST-OK %d modules loaded in %s, port %s\n", len(mods), loadTime.Round(time.Millisecond), port)
	return nil
}

// sayHello writes a line to the agent port for the host end to read. The
// write blocks while no host side is connected, so it is non-blocking with
// a deadline: PID 1 must never hang.
func sayHello(port string) error {
	fd, err := unix.Open(port, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", port, err)
	}
	defer unix.Close(fd)
	_, err = waitFor(5*time.Second, func() (string, error) {
		_, err := unix.Write(fd, []byte("COCOON-PORT-HELLO\n"))
		return "", err
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", port, err)
	}
	return nil
}

// findPort returns the /dev node of the virtio-serial port named portName.
func findPort() (string, error) {
	names, _ := filepath.Glob("/sys/class/virtio-ports/vport*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == portName {
			return "/dev/" + filepath.Base(filepath.Dir(n)), nil
		}
	}
	return "", fmt.Errorf("no virtio port named %s (%d ports)", portName, len(names))
}

func exists(p string) func() (string, error) {
	return func() (string, error) {
		_, err := os.Stat(p)
		return p, err
	}
}

func hasFS(fs string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile("/proc/filesystems")
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && f[len(f)-1] == fs {
				return fs, nil
			}
		}
		return "", fmt.Errorf("filesystem %s not registered", fs)
	}
}

func waitFor(d time.Duration, f func() (string, error)) (string, error) {
	deadline := time.Now().Add(d)
	for {
		v, err := f()
		if err == nil || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
