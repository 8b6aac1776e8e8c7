package agent

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// PodPIDNamespace is where the pod's shared PID namespace is bind-mounted in
// the guest; container specs join it by this path.
const PodPIDNamespace = "/run/cocoon/pod-pidns"

// startPodPIDNamespace starts the pause process, PID 1 of a new PID namespace
// that the pod's containers share (Kubernetes' shareProcessNamespace), and
// pins the namespace at PodPIDNamespace.
func startPodPIDNamespace() (*os.Process, error) {
	cmd := exec.Command("/proc/self/exe", "pause")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pod pause process: %w", err)
	}
	if err := os.MkdirAll("/run/cocoon", 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(PodPIDNamespace, os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, err
	}
	f.Close()
	src := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/pid"
	if err := unix.Mount(src, PodPIDNamespace, "", unix.MS_BIND, ""); err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("pin pod PID namespace: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	return cmd.Process, nil
}

// RunPause is the pause process: PID 1 of the pod's PID namespace. It reaps
// the processes the pod's containers orphan and exits on SIGTERM.
func RunPause() {
	if len(os.Args) > 2 && os.Args[2] == pauseExitWithParent {
		exitWithParent() // a host pod's (hostmode.go)
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws unix.WaitStatus
			if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); err != nil || pid <= 0 {
				break
			}
		}
	}
}
