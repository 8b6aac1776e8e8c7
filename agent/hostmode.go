package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// Host mode: cocoon-agent as a host pod's sandbox process. cocoond (vm/host)
// starts "cocoon-agent host" on the host, in the pod's network namespace,
// and talks to it over a unix socket in the pod's 0700 run dir with the
// pod's token, as it talks to a VM's agent. The agent then runs the pod's
// containers with the same engine as in a guest; what differs is data:
// libcontainer pivots into the rootfs (a host mount of the container's
// storage layer), the state lives in the pod's run dir, the pod's own
// namespaces are made here, and nothing of the host is configured. The code
// is trusted (it is cocoond's); the workloads in its containers are confined
// as runc would confine them, by the spec cocoond built.

// HostOptions configure the agent in host mode.
type HostOptions struct {
	// Socket is where the agent listens (created 0600).
	Socket string
	// TokenFile holds the pod's token (agentapi.TokenSize bytes).
	TokenFile string
	// StateDir is libcontainer's state root for the pod's containers.
	StateDir string
	// SystemdCgroup makes libcontainer read cgroups paths as systemd's
	// "slice:prefix:name" (kubelet's cgroupDriver systemd).
	SystemdCgroup bool
}

// ParseHostArgs reads the host mode's flags (the arguments after "host").
func ParseHostArgs(args []string) (HostOptions, error) {
	var o HostOptions
	fs := flag.NewFlagSet(agentapi.HostModeArg, flag.ContinueOnError)
	fs.StringVar(&o.Socket, "socket", "", "unix socket to serve on")
	fs.StringVar(&o.TokenFile, "token-file", "", "file holding the pod's agent token")
	fs.StringVar(&o.StateDir, "state-dir", "", "libcontainer state root")
	fs.BoolVar(&o.SystemdCgroup, "systemd-cgroup", false, "cgroups paths are systemd slice:prefix:name")
	level := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for name, v := range map[string]string{"socket": o.Socket, "token-file": o.TokenFile, "state-dir": o.StateDir} {
		if !path.IsAbs(v) {
			return o, fmt.Errorf("--%s must be an absolute path, got %q", name, v)
		}
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if lvl, err := logrus.ParseLevel(*level); err == nil {
		logrus.SetLevel(lvl)
	}
	return o, nil
}

// hostRefused are the calls a host-mode agent refuses: they configure the
// machine the agent runs on, which for a host pod is the node itself.
var hostRefused = map[string]bool{
	"/" + agentapi.AgentServiceName + "/UpdateInterface": true,
	"/" + agentapi.AgentServiceName + "/UpdateRoutes":    true,
	"/" + agentapi.AgentServiceName + "/OnlineCPUMem":    true,
}

// ServeHost runs the agent in host mode until ctx ends or cocoond destroys
// the sandbox; then it removes every container and the pod's namespaces.
func ServeHost(ctx context.Context, o HostOptions) error {
	// Our stderr is a FIFO cocoond copies into a capped log. A cocoond that
	// crashed leaves it without a reader, and Go kills a program on the
	// first write to a broken stderr: the log line (a failed stream send,
	// say) would take the pod's containers down. Caught (not ignored: an
	// ignored signal stays ignored in the containers we exec), the write
	// fails and the agent serves on until cocoond comes back.
	signal.Notify(make(chan os.Signal, 1), unix.SIGPIPE)
	tok, err := agentapi.ReadTokenFile(o.TokenFile)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return err
	}
	// A socket left by an agent that died is the only thing that can be there:
	// the run dir is the pod's own.
	_ = os.Remove(o.Socket)
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", o.Socket)
	unix.Umask(old)
	if err != nil {
		return err
	}
	defer os.Remove(o.Socket)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	host := &hostPod{stateDir: o.StateDir, systemd: o.SystemdCgroup, ns: map[string]*os.File{}}
	s := &Server{engine: newEngine(), powerOff: cancel, policy: Policy{Token: tok, HostMode: true}}
	s.engine.host = host
	logrus.WithField("socket", o.Socket).Info("agent serving in host mode")
	err = ServeOn(ctx, l, s)
	// Whatever ended the serving, the pod ends with it: no container of a
	// host pod may outlive its agent, which is all cocoond can reach it by.
	if derr := s.engine.removeAll(); derr != nil {
		logrus.WithError(derr).Error("removing the pod's containers")
		err = errors.Join(err, derr)
	}
	host.close()
	return err
}

// hostPod is what a host-mode agent adds to the engine: where libcontainer
// keeps state, the cgroup driver, and the pod's own namespaces, each pinned
// by an open file so the containers join them by /proc/<agent>/fd/<n>
// (no mount on the host to leak, no pid to be reused).
type hostPod struct {
	stateDir string
	systemd  bool

	mu      sync.Mutex
	created bool
	ns      map[string]*os.File // placeholder path → the namespace
	pause   *exec.Cmd           // PID 1 of the shared PID namespace
	// pauseLife is the write end of the pipe pause exits on at EOF.
	pauseLife *os.File
}

// createSandbox makes the pod's IPC and UTS namespaces (with the pod's
// hostname) and, when asked, its shared PID namespace. Containers join the
// ones their spec names; a pod sharing the host's namespace names none.
// Nothing of the host is touched: DNS and hosts files are binds cocoond
// gives each container, sysctls are in each container's spec.
func (h *hostPod) createSandbox(req *agentapi.CreateSandboxRequest) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.created {
		return status.Error(codes.AlreadyExists, "sandbox already created")
	}
	ipc, uts, err := unshareIPCUTS(req.GetHostname())
	if err != nil {
		return status.Errorf(codes.Internal, "pod namespaces: %v", err)
	}
	h.ns[agentapi.HostPodIPCNamespace], h.ns[agentapi.HostPodUTSNamespace] = ipc, uts
	if req.GetSharedPidNamespace() {
		cmd, pidns, life, err := startHostPause()
		if err != nil {
			h.closeLocked()
			return status.Errorf(codes.Internal, "pod PID namespace: %v", err)
		}
		h.pause, h.pauseLife, h.ns[agentapi.HostPodPIDNamespace] = cmd, life, pidns
	}
	h.created = true
	return nil
}

// unshareIPCUTS makes new IPC and UTS namespaces on a thread of their own
// and returns them open. The thread stays locked and dies with its
// goroutine (or, if it is the main thread, which Go never ends, stays
// wedged running nothing), so no other goroutine ever runs in those
// namespaces.
func unshareIPCUTS(hostname string) (ipc, uts *os.File, err error) {
	type result struct {
		ipc, uts *os.File
		err      error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		var r result
		defer func() { ch <- r }()
		if r.err = unix.Unshare(unix.CLONE_NEWIPC | unix.CLONE_NEWUTS); r.err != nil {
			return
		}
		if hostname != "" {
			if r.err = unix.Sethostname([]byte(hostname)); r.err != nil {
				r.err = fmt.Errorf("hostname %q: %w", hostname, r.err)
				return
			}
		}
		if r.ipc, r.err = os.Open("/proc/thread-self/ns/ipc"); r.err != nil {
			return
		}
		if r.uts, r.err = os.Open("/proc/thread-self/ns/uts"); r.err != nil {
			r.ipc.Close()
		}
	}()
	r := <-ch
	return r.ipc, r.uts, r.err
}

// pauseExitWithParent makes the pause process exit when the agent does.
const pauseExitWithParent = "--exit-with-parent"

// startHostPause starts the pause process as PID 1 of a new PID namespace
// and opens that namespace. It exits when the agent does (the pipe the agent
// holds the write end of reaches EOF), so the namespace and every container
// process in it end with the pod. Not by a parent-death signal: that follows
// the forking thread, and Go ends threads (libcontainer locks one into a
// container's mount namespace and lets it go), which killed the pod's PID
// namespace under its containers.
func startHostPause() (*exec.Cmd, *os.File, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	defer r.Close()
	cmd := exec.Command("/proc/self/exe", "pause", pauseExitWithParent)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	cmd.ExtraFiles = []*os.File{r} // fd 3
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, nil, nil, err
	}
	f, err := os.Open("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/pid")
	if err != nil {
		w.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, nil, err
	}
	go func() { _ = cmd.Wait() }()
	return cmd, f, w, nil
}

// exitWithParent ends the pause process once the agent is gone: its pipe
// (fd 3) then reads EOF. (PID 1 of a namespace cannot watch its parent's pid:
// getppid says 0 and the parent is outside its namespace.)
func exitWithParent() {
	life := os.NewFile(3, "agent-life")
	go func() {
		_, _ = io.Copy(io.Discard, life)
		os.Exit(0)
	}()
}

// prepareSpec puts the real paths of the pod's namespaces in place of the
// placeholders cocoond wrote, and keeps the OOM score adjustment from going
// below the agent's own, which the kernel refuses to an unprivileged lowering
// (containerd's restrict_oom_score_adj).
func (h *hostPod) prepareSpec(spec *specs.Spec) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if spec.Linux != nil {
		for i, ns := range spec.Linux.Namespaces {
			switch ns.Path {
			case agentapi.HostPodPIDNamespace, agentapi.HostPodIPCNamespace, agentapi.HostPodUTSNamespace:
				f := h.ns[ns.Path]
				if f == nil {
					return status.Errorf(codes.FailedPrecondition, "the pod has no %s namespace (CreateSandbox first, with a shared PID namespace for %s)", ns.Type, agentapi.HostPodPIDNamespace)
				}
				spec.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
			}
		}
	}
	if spec.Process != nil && spec.Process.OOMScoreAdj != nil {
		if own, err := ownOOMScoreAdj(); err == nil && *spec.Process.OOMScoreAdj < own {
			adj := own
			spec.Process.OOMScoreAdj = &adj
		}
	}
	return nil
}

func ownOOMScoreAdj() (int, error) {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// close ends the pod's namespaces: the pause process and the pinned files.
func (h *hostPod) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closeLocked()
}

func (h *hostPod) closeLocked() {
	if h.pause != nil {
		_ = h.pause.Process.Kill()
		h.pauseLife.Close()
		h.pause, h.pauseLife = nil, nil
	}
	for k, f := range h.ns {
		f.Close()
		delete(h.ns, k)
	}
	h.created = false
}

// removeAll removes every container (killing those still running).
func (e *engine) removeAll() error {
	e.mu.Lock()
	ids := make([]string, 0, len(e.containers))
	for id, c := range e.containers {
		if c != nil {
			ids = append(ids, id)
		}
	}
	e.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if err := e.remove(id, true); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}
