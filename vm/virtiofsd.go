package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
)

// VirtiofsdPath is Debian's virtiofsd (from qemu-system-x86).
var VirtiofsdPath = "/usr/lib/qemu/virtiofsd"

// VirtiofsSocket is the vhost-user socket serving share tag in runDir.
func VirtiofsSocket(runDir, tag string) string {
	return filepath.Join(runDir, "virtiofs-"+tag+".sock")
}

// VirtiofsdLog is the capped log of the virtiofsd serving tag in runDir.
func VirtiofsdLog(runDir, tag string) string {
	return filepath.Join(runDir, "virtiofsd-"+tag+".log")
}

// StartVirtiofsd serves share.Source on VirtiofsSocket and waits until the
// socket exists. The caller supervises the returned process. virtiofsd's
// namespace sandbox gives it a mount namespace of its own, where the pod's
// mounts go (see ShareNamespace).
func StartVirtiofsd(ctx context.Context, runDir string, share Share, log *logrus.Entry) (*Watched, string, error) {
	sock := VirtiofsSocket(runDir, share.Tag)
	logPath := VirtiofsdLog(runDir, share.Tag)
	capped, logFile, err := OpenHelperLog(logPath, log)
	if err != nil {
		return nil, "", err
	}
	defer logFile.Close()
	cmd := exec.Command(VirtiofsdPath, "--socket-path="+sock, "-o", "source="+share.Source,
		"-o", "cache=auto", "-o", "sandbox=namespace", "-o", "xattr")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	w, err := StartWatched("virtiofsd-"+share.Tag, cmd)
	if err != nil {
		capped.Close()
		return nil, "", err
	}
	go func() {
		<-w.Done()
		capped.Close()
	}()
	for {
		// The socket file appears at bind(), before listen(): a VMM that
		// connects in between is refused.
		if listening(sock) {
			return w, sock, nil
		}
		select {
		case <-w.Done():
			_ = os.Remove(sock)
			return nil, "", fmt.Errorf("virtiofsd for %s exited: %v (see %s)", share.Tag, w.Err(), logPath)
		case <-ctx.Done():
			_ = w.Terminate(time.Second)
			_ = os.Remove(sock)
			return nil, "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// soAcceptCon is the kernel's __SO_ACCEPTCON: the socket listens.
const soAcceptCon = 1 << 16

// listening says whether a unix socket is bound at path and accepting
// connections, from /proc/net/unix (connecting to find out would take
// virtiofsd's only connection).
func listening(path string) bool {
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(line)
		if len(f) < 8 || f[7] != path {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err == nil && flags&soAcceptCon != 0 {
			return true
		}
	}
	return false
}
