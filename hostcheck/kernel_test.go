package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestKernelChecks(t *testing.T) {
	for _, tt := range []struct {
		name   string
		breaks func(t *testing.T, h *Host)
		check  func(h *Host) Result
		status Status
		detail string
		fix    string
	}{
		{name: "root", check: (*Host).checkRoot, status: OK, detail: "running as root"},
		{name: "not root", breaks: func(_ *testing.T, h *Host) { h.Euid = 1000 }, check: (*Host).checkRoot,
			status: Fail, detail: "uid 1000", fix: "run as root"},

		{name: "cgroup v2 with controllers", check: cgroupCheck("cgroupfs"), status: OK, detail: "cgroup v2 with cpu, cpuacct, memory, pids"},
		{name: "hybrid cgroups, controllers in v1", breaks: func(t *testing.T, h *Host) {
			// This machine's layout: every controller in v1, an empty v2 beside.
			v1 := t.TempDir()
			writeFile(t, cgroupDir(t, h)+"/cgroup.controllers", "\n")
			writeFile(t, filepath.Join(h.ProcDir, "self/mountinfo"), fmt.Sprintf(
				"32 31 0:29 / %[1]s/cpu rw - cgroup cgroup rw,cpu\n33 31 0:30 / %[1]s/cpuacct rw - cgroup cgroup rw,cpuacct\n"+
					"34 31 0:31 / %[1]s/memory rw - cgroup cgroup rw,memory\n35 31 0:32 / %[1]s/pids rw - cgroup cgroup rw,pids\n"+
					"36 31 0:33 / %[1]s/systemd rw - cgroup cgroup rw,xattr,name=systemd\n37 31 0:34 / %[2]s rw - cgroup2 cgroup2 rw\n",
				v1, cgroupDir(t, h)))
		}, check: cgroupCheck("cgroupfs"), status: OK, detail: "cpu, cpuacct, memory, pids in cgroup v1 hierarchies"},
		{name: "cgroup v1 with cpu and cpuacct together", breaks: func(t *testing.T, h *Host) {
			writeFile(t, filepath.Join(h.ProcDir, "self/mountinfo"),
				"32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"+
					"34 31 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n35 31 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n")
		}, check: cgroupCheck("cgroupfs"), status: OK, detail: "in cgroup v1 hierarchies"},
		{name: "no memory controller anywhere", breaks: func(t *testing.T, h *Host) {
			writeFile(t, cgroupDir(t, h)+"/cgroup.controllers", "cpu pids\n")
		}, check: cgroupCheck("cgroupfs"), status: Warn, detail: "no hierarchy has memory", fix: "unified_cgroup_hierarchy=1"},
		{name: "no cgroups mounted", breaks: func(t *testing.T, h *Host) {
			writeFile(t, filepath.Join(h.ProcDir, "self/mountinfo"), "25 1 0:22 / /sys rw - sysfs sysfs rw\n")
		}, check: cgroupCheck("cgroupfs"), status: Warn, detail: "mounted: none"},
		{name: "systemd driver without systemd", breaks: func(t *testing.T, h *Host) {
			h.SystemdDir = filepath.Join(t.TempDir(), "missing")
		}, check: cgroupCheck("systemd"), status: Fail, detail: "systemd is not running", fix: "cgroupfs"},
		{name: "systemd driver with systemd", check: cgroupCheck("systemd"), status: OK, detail: "with the systemd driver"},
		{name: "cgroup2 mount point with a space", breaks: func(t *testing.T, h *Host) {
			dir := filepath.Join(t.TempDir(), "my cgroup")
			writeFile(t, dir+"/cgroup.controllers", "cpu memory pids\n")
			writeFile(t, filepath.Join(h.ProcDir, "self/mountinfo"), fmt.Sprintf("41 31 0:38 / %s rw - cgroup2 cgroup2 rw\n",
				filepath.Join(filepath.Dir(dir), `my\040cgroup`)))
		}, check: cgroupCheck("cgroupfs"), status: OK, detail: "my cgroup"},

		{name: "netns", check: (*Host).checkNetns, status: OK, detail: "throw-away netns"},
		{name: "no netns", breaks: func(_ *testing.T, h *Host) {
			h.TryNetns = func() error { return errors.New("unshare: operation not permitted") }
		}, check: (*Host).checkNetns, status: Fail, detail: "operation not permitted", fix: "CAP_SYS_ADMIN"},

		{name: "tun", check: (*Host).checkTun, status: OK, detail: "opens"},
		{name: "no tun", breaks: removeDev("net/tun"), check: (*Host).checkTun, status: Fail, detail: "no such file", fix: "modprobe tun"},

		{name: "overlay loaded", check: overlay("overlay"), status: OK, detail: "in /proc/filesystems"},
		{name: "overlay a module", breaks: func(t *testing.T, h *Host) {
			writeFile(t, filepath.Join(h.ProcDir, "filesystems"), "nodev\tsysfs\n")
			writeFile(t, filepath.Join(h.ModulesDir, "modules.dep"), "kernel/fs/overlayfs/overlay.ko.xz:\n")
		}, check: overlay("overlay"), status: OK, detail: "module available (modules.dep"},
		{name: "overlay built in", breaks: func(t *testing.T, h *Host) {
			writeFile(t, filepath.Join(h.ProcDir, "filesystems"), "nodev\tsysfs\n")
			writeFile(t, filepath.Join(h.ModulesDir, "modules.builtin"), "kernel/fs/overlayfs/overlay.ko\n")
		}, check: overlay("overlay"), status: OK, detail: "modules.builtin"},
		{name: "no overlay: vfs fallback warns", breaks: func(t *testing.T, h *Host) {
			writeFile(t, filepath.Join(h.ProcDir, "filesystems"), "nodev\tsysfs\n")
			h.ModulesDir = filepath.Join(t.TempDir(), "missing")
		}, check: overlay("overlay"), status: Warn, detail: "fall back to vfs", fix: "modprobe overlay"},
		{name: "vfs configured needs no overlay", breaks: func(t *testing.T, h *Host) {
			writeFile(t, filepath.Join(h.ProcDir, "filesystems"), "")
		}, check: overlay("vfs"), status: OK, detail: "not needed"},

		{name: "vhost-vsock", check: (*Host).checkVsock, status: OK, detail: "over vhost-vsock"},
		{name: "no vhost-vsock", breaks: removeDev("vhost-vsock"), check: (*Host).checkVsock, status: Warn, detail: "virtio-serial", fix: "modprobe vhost_vsock"},

		{name: "kvm", check: (*Host).checkKVM, status: OK, detail: "opens"},
		{name: "no kvm", breaks: removeDev("kvm"), check: (*Host).checkKVM, status: Warn, detail: "does not exist: QEMU falls back to TCG", fix: "modprobe kvm_intel"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := fakeHost(t)
			if tt.breaks != nil {
				tt.breaks(t, h)
			}
			wantResult(t, tt.check(h), tt.status, tt.detail, tt.fix)
		})
	}
}

func cgroupCheck(driver string) func(*Host) Result {
	return func(h *Host) Result { return h.checkCgroup(driver) }
}

func overlay(driver string) func(*Host) Result {
	return func(h *Host) Result { return h.checkOverlay(driver) }
}

func removeDev(name string) func(*testing.T, *Host) {
	return func(t *testing.T, h *Host) {
		if err := os.Remove(filepath.Join(h.DevDir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func cgroupDir(t *testing.T, h *Host) string {
	mounts, err := cgroup2Mounts(filepath.Join(h.ProcDir, "self/mountinfo"))
	if err != nil || len(mounts) != 1 {
		t.Fatalf("fake mountinfo: %v %v", mounts, err)
	}
	return mounts[0]
}
