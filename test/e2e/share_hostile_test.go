package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestHostileGuestShare: a container that is root in its guest mounts the
// pod's virtio-fs share itself and plants what it can (symlinks to a host
// file and dir where cocoond reads and creates, a FIFO, a huge file). The
// share's root is read-only to the guest, so every plant fails; cocoond's
// calls that touch the share all return in time; the host file and dir the
// symlinks point at are untouched; and the pod's dirs go with the pod.
func TestHostileGuestShare(t *testing.T) {
	e := requireEnv(t)
	if os.Getenv("COCOON_GUEST_DIR") == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	imageRef := pull(t, e, busybox)

	// Host victims, outside every pod dir.
	victimDir := t.TempDir()
	victimFile := filepath.Join(victimDir, "secret")
	if err := os.WriteFile(victimFile, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	volume := t.TempDir()
	checkVictims := func(when string) {
		t.Helper()
		if data, err := os.ReadFile(victimFile); err != nil || string(data) != "host secret" {
			t.Errorf("%s: host file changed: %q %v", when, data, err)
		}
		if entries, _ := os.ReadDir(victimDir); len(entries) != 1 {
			t.Errorf("%s: host dir changed: %v", when, entries)
		}
	}
	// step runs one CRI call under a deadline: nothing the guest planted
	// may hang it.
	step := func(name string, fn func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if err := fn(ctx); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "hostile", Namespace: "default", Uid: "uid-hostile"},
		LogDirectory: t.TempDir(),
		// The container that plays the hostile guest root is privileged,
		// which only a privileged pod may hold.
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}},
	}
	var podID string
	step("RunPodSandbox", func(ctx context.Context) error {
		r, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
		if r != nil {
			podID = r.PodSandboxId
		}
		return err
	})
	defer e.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
	podDir := filepath.Join(e.dir, "run", "sandboxes", podID)
	share := filepath.Join(podDir, "shared")

	// The share is a tmpfs of its own, of the configured size (16 MiB).
	var fs unix.Statfs_t
	if err := unix.Statfs(share, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC || uint64(fs.Blocks)*uint64(fs.Bsize) != 16<<20 {
		t.Errorf("pod share %s: type %#x, %d bytes (%v); want a 16 MiB tmpfs", share, fs.Type, uint64(fs.Blocks)*uint64(fs.Bsize), err)
	}

	var cid string
	step("CreateContainer", func(ctx context.Context) error {
		r, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: podID, SandboxConfig: podCfg,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "root"},
				Image:    &runtimeapi.ImageSpec{Image: imageRef, UserSpecifiedImage: busybox},
				Command:  []string{"sh", "-c", "while :; do sleep 1; done"},
				Mounts:   []*runtimeapi.Mount{{HostPath: volume, ContainerPath: "/vol"}},
				Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					Privileged: true, RunAsUser: &runtimeapi.Int64Value{Value: 0},
				}},
			},
		})
		if r != nil {
			cid = r.ContainerId
		}
		return err
	})
	step("StartContainer", func(ctx context.Context) error {
		_, err := e.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cid})
		return err
	})

	// Root in the guest: mount the share and plant.
	plants := []struct{ name, cmd string }{
		{"spec symlink", fmt.Sprintf("ln -s %s /s/%s/config.json", victimFile, cid)},
		{"symlinked mounts dir", fmt.Sprintf("mv /s/%[1]s/mounts /s/%[1]s/m2 && ln -s %[2]s /s/%[1]s/mounts", cid, victimDir)},
		{"symlink in place of a container dir", fmt.Sprintf("ln -s %s /s/%s", victimDir, strings.Repeat("f", 64))},
		{"FIFO for the pod files", "rm -f /s/hosts && mkfifo /s/hosts"},
		{"huge file", "dd if=/dev/zero of=/s/huge bs=1M count=64"},
	}
	script := "mkdir -p /s && mount -t virtiofs cocoon /s || exit 99\n"
	for _, p := range plants {
		script += fmt.Sprintf("if ( %s ) 2>/dev/null; then echo 'planted: %s'; fi\n", p.cmd, p.name)
	}
	// Where the guest may write (its rootfs, a writable volume) it can, and
	// symlinks there point nowhere the host follows.
	script += fmt.Sprintf("ln -s %s /s/%s/rootfs/evil && ln -s %s /vol/evil && echo writable-ok\n", victimFile, cid, victimDir)
	var out string
	step("ExecSync (plant)", func(ctx context.Context) error {
		r, err := e.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", script}, Timeout: 60})
		if err != nil {
			return err
		}
		out = string(r.Stdout) + string(r.Stderr)
		if r.ExitCode == 99 {
			return fmt.Errorf("the container could not mount the share: %s", out)
		}
		return nil
	})
	t.Logf("the guest's attempts:\n%s", out)
	if strings.Contains(out, "planted:") {
		t.Errorf("the guest wrote into the share's root:\n%s", out)
	}
	if !strings.Contains(out, "writable-ok") {
		t.Errorf("the container's own writable trees are not writable:\n%s", out)
	}
	if _, err := os.Lstat(filepath.Join(share, cid, "config.json")); !os.IsNotExist(err) {
		t.Errorf("a spec file in the share: %v", err)
	}

	// Exec builds its process from cocoond's record, not from the share.
	step("ExecSync", func(ctx context.Context) error {
		r, err := e.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"echo", "exec-ok"}, Timeout: 30})
		if err == nil && !strings.Contains(string(r.Stdout), "exec-ok") {
			err = fmt.Errorf("exec output %q", r.Stdout)
		}
		return err
	})
	checkVictims("after the plants")
	step("RemoveContainer", func(ctx context.Context) error {
		_, err := e.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cid})
		return err
	})
	step("StopPodSandbox", func(ctx context.Context) error {
		_, err := e.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID})
		return err
	})
	step("RemovePodSandbox", func(ctx context.Context) error {
		_, err := e.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
		return err
	})
	checkVictims("after the pod's removal")
	if entries, _ := os.ReadDir(volume); len(entries) != 1 {
		t.Errorf("the volume lost or gained files: %v", entries)
	}
	if _, err := os.Lstat(podDir); !os.IsNotExist(err) {
		t.Errorf("pod dir left: %v", err)
	}
	if m := mountsUnder(podDir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}
