package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// ShellOptions shape the debug console's shell.
type ShellOptions struct {
	Term string   // TERM of the shell; "" leaves it unset
	TTY  bool     // a terminal; else pipes, with stdout and stderr apart
	Size TermSize // the terminal's first size (zero: the kernel's default)
}

// guestShellPath is busybox's sh, which `cocoon guest build` packs.
const guestShellPath = "/bin/sh"

// FindPod finds a pod the way an operator names one: its full ID, its name
// (metadata name, namespace/name, or the full name_namespace_uid_attempt),
// or a unique ID prefix. When a name fits several pods (kubelet keeps a
// stopped attempt beside its successor) the one ready pod among them wins.
func (m *Manager) FindPod(ref string) (Pod, error) {
	if ref == "" {
		return Pod{}, fmt.Errorf("%w: no pod named", errdefs.ErrInvalidArgument)
	}
	if p, ok := m.pods.get(ref); ok {
		return p, nil
	}
	var named, ready []Pod
	for _, p := range m.pods.list() {
		md := p.PodConfig().GetMetadata()
		if ref == p.Name || ref == md.GetName() || ref == md.GetNamespace()+"/"+md.GetName() {
			named = append(named, p)
			if p.State == StateReady {
				ready = append(ready, p)
			}
		}
	}
	switch {
	case len(named) == 1:
		return named[0], nil
	case len(ready) == 1:
		return ready[0], nil
	case len(named) > 1:
		ids := make([]string, len(named))
		for i, p := range named {
			ids[i] = p.ID[:13]
		}
		return Pod{}, fmt.Errorf("%w: %q names %d pods (%s): give an ID", errdefs.ErrInvalidArgument, ref, len(named), strings.Join(ids, ", "))
	}
	p, err := m.Pod(ref)
	if errors.Is(err, errdefs.ErrNotFound) {
		return Pod{}, fmt.Errorf("%w: no pod has the ID, ID prefix or name %q", errdefs.ErrNotFound, ref)
	}
	return p, err
}

// DebugConsole runs a root shell in the pod VM's own root environment,
// outside every container, with the caller's stdio, and returns its exit
// code. Whether an operator may have one is the caller's decision
// (cocoond's [debug] console).
func (m *Manager) DebugConsole(ctx context.Context, podID string, opts ShellOptions, stdin io.Reader, stdout, stderr io.WriteCloser, resize <-chan TermSize) (int32, error) {
	p, err := m.Pod(podID)
	if err != nil {
		return 0, err
	}
	if p.State != StateReady {
		return 0, fmt.Errorf("%w: pod %s is %s: its VM is not running", errdefs.ErrFailedPrecondition, p.ID, p.State)
	}
	rt, err := m.runtime(p.ID)
	if err != nil {
		return 0, err
	}
	proc, err := json.Marshal(guestShell(opts))
	if err != nil {
		return 0, err
	}
	req := &agentapi.ExecProcessRequest{ExecId: "console-" + newID()[:12], Process: proc, Tty: opts.TTY, Stdin: stdin != nil, GuestRoot: true}
	if _, err := rt.agent.ExecProcess(ctx, req); err != nil {
		// The two guest answers that mean something to the operator are
		// translated; any other stays a plain error (the guest's code is
		// not ours to answer with).
		var guest *agentclient.GuestError
		if errors.As(err, &guest) {
			switch guest.Code {
			case codes.NotFound:
				// An agent from before guest_root looks for container "".
				return 0, fmt.Errorf("%w: the agent of pod %s cannot run a debug console: rebuild the guest (cocoon guest build) and recreate the pod", errdefs.ErrFailedPrecondition, p.ID)
			case codes.FailedPrecondition:
				return 0, fmt.Errorf("%w: pod %s: %s", errdefs.ErrFailedPrecondition, p.ID, guest.Message)
			}
		}
		return 0, fmt.Errorf("agent ExecProcess: %w", err)
	}
	m.opts.Log.WithField("pod", p.ID).WithField("exec", req.ExecId).Warn("debug console opened")
	code, err := m.streamProcess(ctx, rt, req, stdin, stdout, stderr, resize)
	m.opts.Log.WithField("pod", p.ID).WithField("exec", req.ExecId).WithField("exit_code", code).Info("debug console closed")
	return code, err
}

// guestShell is the debug console's process: root, cwd /, and an
// environment of its own (nothing of the agent's leaks in).
func guestShell(opts ShellOptions) *specs.Process {
	env := []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=" + guestShellPath,
		// The prompt says where the operator is: the VM, not a container.
		`PS1=[cocoon vm \h] \w # `}
	if opts.Term != "" {
		env = append(env, "TERM="+opts.Term)
	}
	sp := &specs.Process{Args: []string{guestShellPath}, Env: env, Cwd: "/", Terminal: opts.TTY}
	if opts.TTY && opts.Size.Width > 0 && opts.Size.Height > 0 {
		sp.ConsoleSize = &specs.Box{Width: uint(opts.Size.Width), Height: uint(opts.Size.Height)}
	}
	return sp
}
