package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// VirtiofsdPath is Debian's virtiofsd (from qemu-system-x86).
var VirtiofsdPath = "/usr/lib/qemu/virtiofsd"

// VirtiofsSocket is the vhost-user socket serving share tag in runDir.
func VirtiofsSocket(runDir, tag string) string {
	return filepath.Join(runDir, "virtiofs-"+tag+".sock")
}

// StartVirtiofsd serves share.Source on VirtiofsSocket and waits until the
// socket exists. The caller supervises the returned process. virtiofsd's
// namespace sandbox gives it a mount namespace of its own, where the pod's
// mounts go (see ShareNamespace).
func StartVirtiofsd(ctx context.Context, runDir string, share Share) (*Watched, string, error) {
	sock := VirtiofsSocket(runDir, share.Tag)
	logFile, err := os.OpenFile(filepath.Join(runDir, "virtiofsd-"+share.Tag+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", err
	}
	defer logFile.Close()
	cmd := exec.Command(VirtiofsdPath, "--socket-path="+sock, "-o", "source="+share.Source,
		"-o", "cache=auto", "-o", "sandbox=namespace", "-o", "xattr")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	w, err := StartWatched("virtiofsd-"+share.Tag, cmd)
	if err != nil {
		return nil, "", err
	}
	for {
		if _, err := os.Stat(sock); err == nil {
			return w, sock, nil
		}
		select {
		case <-w.Done():
			_ = os.Remove(sock)
			return nil, "", fmt.Errorf("virtiofsd for %s exited: %v (see %s)", share.Tag, w.Err(), logFile.Name())
		case <-ctx.Done():
			_ = w.Terminate(time.Second)
			_ = os.Remove(sock)
			return nil, "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
