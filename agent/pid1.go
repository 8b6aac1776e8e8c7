// Package agent is cocoon-agent, PID 1 of every pod VM: it mounts the guest's
// filesystems, loads the kernel modules shipped in the initramfs, reaps orphans,
// and serves the agent protocol (api/agent) over vsock or virtio-serial.
//
// Two processes: PID 1 (this file) only sets up the guest, reaps and powers
// off; it runs the ttRPC server as a child ("cocoon-agent serve"). Containers
// are children of the server, so libcontainer's waits never race PID 1's
// reaper, while processes a container orphans are reparented to PID 1 and reaped.
package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/agent/kmod"
)

type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// baseMounts are what a container runtime needs in the guest. Order matters.
var baseMounts = []mountPoint{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate"},
}

// RunPID1 never returns: it sets the guest up, supervises the server and, when
// told to stop (SIGTERM, SIGINT, or the server asking), powers the VM off.
func RunPID1() {
	log := logrus.WithField("component", "pid1")
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err == nil {
		logrus.SetOutput(console)
	}
	if err := setupGuest(); err != nil {
		log.WithError(err).Error("guest setup failed")
		powerOff()
	}
	logrus.SetLevel(levelFromCmdline())

	signals := make(chan os.Signal, 8)
	signal.Notify(signals, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)

	server := startServer(log)
	for sig := range signals {
		switch sig {
		case unix.SIGCHLD:
			if reapAll(server) {
				log.Warn("agent server exited, restarting it")
				time.Sleep(200 * time.Millisecond)
				server = startServer(log)
			}
		default:
			log.WithField("signal", sig.String()).Info("powering off")
			shutdown()
		}
	}
}

func setupGuest() error {
	for _, m := range baseMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	for _, l := range [][2]string{{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}, {"pts/ptmx", "/dev/ptmx"}} {
		_ = os.Remove(l[1])
		if err := os.Symlink(l[0], l[1]); err != nil {
			return err
		}
	}
	if err := kmod.Load("/"); err != nil {
		return fmt.Errorf("loading kernel modules: %w", err)
	}
	// Delegate the controllers containers get limits through.
	if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu +cpuset +memory +pids +io"), 0); err != nil {
		logrus.WithError(err).Warn("enabling cgroup controllers")
	}
	return os.MkdirAll("/etc", 0o755)
}

// levelFromCmdline reads cocoon.log=<level> from the kernel command line.
func levelFromCmdline() logrus.Level {
	data, _ := os.ReadFile("/proc/cmdline")
	return parseLogLevel(string(data))
}

func parseLogLevel(cmdline string) logrus.Level {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "cocoon.log="); ok {
			if lvl, err := logrus.ParseLevel(v); err == nil {
				return lvl
			}
		}
	}
	return logrus.InfoLevel
}

func startServer(log *logrus.Entry) *os.Process {
	cmd := exec.Command("/proc/self/exe", "serve")
	cmd.Stdout, cmd.Stderr = logrus.StandardLogger().Out, logrus.StandardLogger().Out
	cmd.Env = append(os.Environ(), "COCOON_LOG_LEVEL="+logrus.GetLevel().String())
	if err := cmd.Start(); err != nil {
		log.WithError(err).Error("cannot start agent server")
		powerOff()
	}
	return cmd.Process
}

// reapAll collects every exited child; it reports whether the server was one.
func reapAll(server *os.Process) (serverDied bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err != nil || pid <= 0 {
			return serverDied
		}
		if server != nil && pid == server.Pid {
			serverDied = true
		}
	}
}

// shutdown asks every process to stop, gives them a moment, then powers off.
func shutdown() {
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); errors.Is(err, unix.ECHILD) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = unix.Kill(-1, unix.SIGKILL)
	powerOff()
}

func powerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	os.Exit(1) // not reached unless reboot is refused
}
