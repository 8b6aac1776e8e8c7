package qemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

// copyGuest copies the guest's kernel and initramfs into a directory of
// the test's own, so the test can "rebuild" it.
func copyGuest(t *testing.T, kernel, initramfs string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	out := make([]string, 2)
	for i, src := range []string{kernel, initramfs} {
		out[i] = filepath.Join(dir, filepath.Base(src))
		copyFile(t, src, out[i])
	}
	return out[0], out[1]
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// guestSh runs a shell command as guest root and waits for it.
func guestSh(t *testing.T, a agentapi.AgentClient, id, script string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	proc, _ := json.Marshal(&specs.Process{Args: []string{"/bin/sh", "-c", script}, Cwd: "/", Env: []string{"PATH=/bin:/sbin"}})
	if _, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: id, Process: proc, GuestRoot: true}); err != nil {
		t.Fatal(err)
	}
	res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: id})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("guest %q: %v, exit %d", script, err, res.GetExitCode())
	}
}

type testClone struct {
	v     vm.VMM
	share string
	mac   net.HardwareAddr
	took  time.Duration // create to a healthy agent
}

// startClone creates and starts a VM of the template's handler with a
// share and a NIC, and waits for its agent.
func startClone(t *testing.T, d *Driver, base vm.Spec, n int) (*testClone, agentapi.AgentClient, func()) {
	t.Helper()
	ctx := context.Background()
	spec := base
	spec.ID = fmt.Sprintf("clone%d", n)
	spec.RunDir = filepath.Join(t.TempDir(), "run")
	share := t.TempDir()
	spec.Shares = []vm.Share{{Tag: "share", Source: share}}
	mac, _ := net.ParseMAC(fmt.Sprintf("02:c0:c0:00:01:%02x", n))
	spec.NICs = []vm.NIC{{ID: "eth0", Tap: tapInTestNetns(t, "tap0"), MAC: mac, MTU: 1400}}
	start := time.Now()
	v, err := d.Create(ctx, &spec)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := v.Start(ctx); err != nil {
		_ = v.Stop(ctx)
		t.Fatal(err)
	}
	t.Logf("%s: create %v, start %v", spec.ID, t0.Sub(start).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	client, a := agentClient(t, v)
	c := &testClone{v: v, share: share, mac: mac, took: time.Since(start)}
	if roll, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", v.State().Pids()[0])); err == nil {
		for _, l := range strings.Split(string(roll), "\n") {
			if strings.HasPrefix(l, "Rss:") || strings.HasPrefix(l, "Pss:") || strings.HasPrefix(l, "Shared_Clean") {
				t.Logf("%s: QEMU %s", spec.ID, strings.Join(strings.Fields(l), " "))
			}
		}
	}
	return c, a, func() {
		client.Close()
		pids := v.State().Pids()
		if err := v.Stop(ctx); err != nil {
			t.Errorf("stopping %s: %v", spec.ID, err)
		}
		assertGone(t, spec.RunDir, pids)
	}
}

// withEntropy fills CreateSandboxRequest's entropy and clock_unix_nano, as
// cocoond does for every pod: the clone's reseed and clock.
func withEntropy(req *agentapi.CreateSandboxRequest) {
	req.Entropy = make([]byte, 64)
	_, _ = rand.Read(req.Entropy)
	req.ClockUnixNano = time.Now().UnixNano()
}

func restored(v vm.VMM) bool { return v.(*qemuVM).afterStart != nil }

// TestTemplateRestore builds a template, restores two clones from it (each
// with its own working virtio-fs share, its own NIC, and RNG state of its
// own), rebuilds the template when the guest changes, and leaves nothing.
func TestTemplateRestore(t *testing.T) {
	m := testGuest(t)
	ctx := context.Background()
	kernel, initramfs := copyGuest(t, m.KernelPath(), m.InitramfsPath())
	root := filepath.Join(t.TempDir(), "templates")
	d := quietDriver()
	d.opts.DebugConsole = true // the checks run shell commands as guest root
	d.tpl = newTemplates(root)
	defer d.Close()
	base := vm.Spec{Kernel: kernel, Initramfs: initramfs, KernelArgs: []string{"cocoon.log=debug"},
		VCPUs: 1, MaxVCPUs: 2, MemoryMiB: 256, MaxMemoryMiB: 512, Accel: "tcg", Template: "tpl"}

	start := time.Now()
	build := base
	build.ID, build.RunDir = "b", "/unused"
	if err := d.BuildTemplate(ctx, &build); err != nil {
		t.Fatal(err)
	}
	var meta templateMeta
	data, err := os.ReadFile(filepath.Join(root, "tpl", templateMetaFile))
	if err != nil || json.Unmarshal(data, &meta) != nil {
		t.Fatalf("template.json: %v", err)
	}
	t.Logf("template built in %v (QEMU start to saved state %d ms): device state %d KiB, RAM data %d MiB",
		time.Since(start).Round(time.Millisecond), meta.BuildMillis, meta.StateBytes>>10, meta.RAMBytes>>20)

	var randoms [][]byte
	for n := 1; n <= 2; n++ {
		c, a, stop := startClone(t, d, base, n)
		if !restored(c.v) {
			stop()
			t.Fatalf("clone %d booted cold", n)
		}
		t.Logf("clone %d: restore to a healthy agent %v", n, c.took.Round(time.Millisecond))
		req := &agentapi.CreateSandboxRequest{SandboxId: "p", Hostname: "p",
			Shares: []*agentapi.Share{{Kind: agentapi.Share_VIRTIOFS, Tag: "share", MountPoint: "/run/cocoon/shared"}}}
		withEntropy(req)
		_, err := a.CreateSandbox(ctx, req)
		if err != nil {
			stop()
			t.Fatalf("clone %d CreateSandbox (mounts the hotplugged share): %v", n, err)
		}
		if !hasMAC(a, c.mac.String()) {
			stop()
			t.Fatalf("clone %d has no NIC with the pod's MAC", n)
		}
		// The guest writes through virtio-fs; the host reads it.
		guestSh(t, a, "rand", "head -c 32 /dev/urandom > /run/cocoon/shared/random")
		r, err := os.ReadFile(filepath.Join(c.share, "random"))
		stop()
		if err != nil || len(r) != 32 {
			t.Fatalf("clone %d: random bytes through the share: %v (%d bytes)", n, err, len(r))
		}
		randoms = append(randoms, r)
	}
	t.Run("clones do not share RNG state", func(t *testing.T) {
		// The guest kernel has no vmgenid (Debian's cloud kernel is built
		// without VIRT_DRIVERS), so clones resume with the template's
		// random state until the agent reseeds it with the host's entropy
		// in CreateSandbox (RNDADDENTROPY, then RNDRESEEDCRNG).
		if bytes.Equal(randoms[0], randoms[1]) {
			t.Fatal("two clones of one template read the same bytes from /dev/urandom")
		}
	})

	// A new guest makes the template stale: that VM boots cold, a rebuild
	// starts in the background, and the next VM restores again.
	copyFile(t, m.InitramfsPath(), initramfs)
	c, _, stop := startClone(t, d, base, 3)
	stop()
	if restored(c.v) {
		t.Fatal("a VM restored from a template of the old guest")
	}
	t.Logf("cold boot to a healthy agent %v", c.took.Round(time.Millisecond))
	bin, _, accel, err := d.resolve(ctx, &build)
	if err != nil {
		t.Fatal(err)
	}
	newKey, err := templateKey(bin, &base, accel, hostHasVsock(), true)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, "the stale template rebuilt", func() bool {
		_, ok := d.tpl.lookup("tpl", newKey)
		return ok
	})
	c, _, stop = startClone(t, d, base, 4)
	stop()
	if !restored(c.v) {
		t.Fatal("the VM after the rebuild booted cold")
	}

	// Nothing left but the template itself: no build dir, no process.
	d.Close()
	assertOnlyTemplates(t, root, "tpl")
	if ps := vm.ProcessesReferencing("/proc", root); len(ps) > 0 {
		t.Fatalf("processes left running from the template dir: %v", ps)
	}
}
