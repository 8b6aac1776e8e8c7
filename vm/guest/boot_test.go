package guest

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests build a guest from Debian's real kernel package and boot it
// under QEMU (TCG: no KVM needed). They need root (apt, dpkg-deb), qemu,
// the go tool, and Debian's mirror or an already cached .deb; otherwise
// they skip and say why.

const bootTimeout = 60 * time.Second

var real struct {
	once  sync.Once
	dir   string // removed by TestMain
	agent string // the test init binary
	m     *Manifest
	skip  string
	err   error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if real.dir != "" {
		os.RemoveAll(real.dir)
	}
	os.Exit(code)
}

// realGuest builds the guest once per test process, with testdata/testinit
// as the agent.
func realGuest(t *testing.T) (*Manifest, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("short mode: skipping the real-kernel guest build")
	}
	real.once.Do(func() {
		if os.Geteuid() != 0 {
			real.skip = "needs root for apt-get download"
			return
		}
		for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "go"} {
			if _, err := exec.LookPath(tool); err != nil {
				real.skip = tool + " not found"
				return
			}
		}
		dir, err := os.MkdirTemp("", "cocoon-guest-test-")
		if err != nil {
			real.err = err
			return
		}
		real.dir = dir
		real.agent = filepath.Join(dir, "testinit")
		build := exec.Command("go", "build", "-o", real.agent, "./testdata/testinit")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			real.err = &buildErr{err, string(out)}
			return
		}
		src := &Debian{CacheDir: testCacheDir()}
		// Fetch first so a missing network and no cache is a skip, not a
		// failure.
		if _, _, err := src.Fetch(context.Background()); err != nil {
			real.skip = "kernel package unavailable (no mirror and no cached .deb): " + err.Error()
			return
		}
		real.m, real.err = Build(context.Background(), Options{
			Out: filepath.Join(dir, "guest"), Agent: real.agent, AgentVersion: "testinit", Source: src, Busybox: hostBusybox(),
		})
	})
	if real.skip != "" {
		t.Skip(real.skip)
	}
	if real.err != nil {
		t.Fatal(real.err)
	}
	return real.m, real.agent
}

type buildErr struct {
	err error
	out string
}

func (e *buildErr) Error() string { return "build testinit: " + e.err.Error() + "\n" + e.out }

func testCacheDir() string {
	if d := os.Getenv("COCOON_GUEST_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// TestBuildReproducible builds the same inputs a second time and wants the
// very same initramfs and kernel.
func TestBuildReproducible(t *testing.T) {
	m1, agent := realGuest(t)
	m2, err := Build(context.Background(), Options{
		Out: filepath.Join(t.TempDir(), "guest"), Agent: agent, AgentVersion: "testinit",
		Source: &Debian{CacheDir: testCacheDir()}, Busybox: hostBusybox(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if m1.Initramfs.SHA256 != m2.Initramfs.SHA256 || m1.Kernel.SHA256 != m2.Kernel.SHA256 {
		t.Fatalf("two builds differ: initramfs %s vs %s, kernel %s vs %s",
			m1.Initramfs.SHA256, m2.Initramfs.SHA256, m1.Kernel.SHA256, m2.Kernel.SHA256)
	}
	t.Logf("initramfs %d bytes sha256 %s, %d modules, busybox %v", m1.Initramfs.Size, m1.Initramfs.SHA256, len(m1.Modules), m1.Busybox != nil)
}

// hostBusybox is Debian's busybox-static when installed: the real guest
// carries it, so the reproducibility check covers it too.
func hostBusybox() string {
	if _, err := os.Stat(DefaultBusybox); err != nil {
		return ""
	}
	return DefaultBusybox
}

// TestBootGuest boots the guest with a virtio-serial agent port, a disk and
// a NIC attached and waits for the test init's marker on the serial console
// and its hello on the agent port.
func TestBootGuest(t *testing.T) {
	m, _ := realGuest(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found")
	}
	m, err = Locate(m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "cocoon-qemu-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256",
		"-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio",
		"-kernel", m.KernelPath(), "-initrd", m.InitramfsPath(),
		"-append", "console=ttyS0 panic=-1 quiet",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=cocoon.agent",
		"-drive", "file="+disk+",if=none,format=raw,id=d0",
		"-device", "virtio-blk-pci,drive=d0",
		// A NIC on an unconnected hub: the device exists, no traffic leaves.
		"-netdev", "hubport,id=n0,hubid=0",
		"-device", "virtio-net-pci,netdev=n0,romfile=",
	)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Whatever happens below, QEMU does not outlive the test.
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait() // killed: its exit status says nothing
	}()

	hello := make(chan string, 1)
	go readPort(ctx, sock, hello)

	var log strings.Builder
	var marker string
	var markerAt time.Duration
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		log.WriteString(line + "\n")
		if strings.Contains(line, "COCOON-GUEST-FAIL") {
			t.Fatalf("guest failed:\n%s", log.String())
		}
		if i := strings.Index(line, "COCOON-GUEST-OK"); i >= 0 && marker == "" {
			marker, markerAt = line[i:], time.Since(start)
		}
	}
	if marker == "" {
		t.Fatalf("no COCOON-GUEST-OK within %s (context: %v); console:\n%s", bootTimeout, ctx.Err(), log.String())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("qemu: %v (guest did not power off cleanly?); console:\n%s", err, log.String())
	}
	select {
	case h := <-hello:
		if h != "COCOON-PORT-HELLO" {
			t.Fatalf("agent port said %q", h)
		}
	case <-time.After(time.Second):
		t.Fatal("nothing read from the agent port")
	}
	t.Logf("%s; marker after %s, powered off after %s", marker, markerAt.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// readPort connects to QEMU's end of the agent port as soon as it exists
// and sends the first line the guest writes.
func readPort(ctx context.Context, sock string, hello chan<- string) {
	var c net.Conn
	for {
		var err error
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if c.SetReadDeadline(dl) != nil {
			return // no hello: the test fails on its timeout
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil {
		hello <- strings.TrimSpace(line)
	}
}
