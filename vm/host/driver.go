// Package host is the vm.Driver of host pods: a host pod's "VM" is
// cocoon-agent in host mode ("cocoon-agent host"), running on the host as
// the pod's sandbox process, in the pod's network namespace, and serving the
// agent protocol on a unix socket in its 0700 run dir with the pod's token.
// vm.Supervisor runs it as it runs a VMM (record, own session so it outlives
// cocoond, pid + start time, adoption, Stop), so sandbox/ drives host pods
// and VM pods through one code path. There is no guest, no share, no NIC and
// nothing to resize.
package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// Name is the driver's name in config and state.
const Name = "host"

// processName names the agent process in logs, errors and its log file.
const processName = "cocoon-agent"

// readyTimeout bounds how long a new agent may take to listen.
const readyTimeout = 10 * time.Second

// Options configure the driver.
type Options struct {
	// Agent is the cocoon-agent binary; empty means the one next to the
	// running executable, else on PATH.
	Agent string
	// SystemdCgroup tells the agent that cgroups paths are systemd's.
	SystemdCgroup bool
	Log           *logrus.Entry
}

// Driver runs host pods' agents.
type Driver struct{ opts Options }

// New returns the driver.
func New(opts Options) *Driver {
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Driver{opts: opts}
}

// Name implements vm.Driver.
func (d *Driver) Name() string { return Name }

// agentBinary finds cocoon-agent: the configured path, the one installed
// beside cocoond (make build puts both in bin/), else PATH.
func (d *Driver) agentBinary() (string, error) {
	if d.opts.Agent != "" {
		return d.opts.Agent, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "cocoon-agent")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath("cocoon-agent")
	if err != nil {
		return "", fmt.Errorf("host: cocoon-agent runs host pods: %w", err)
	}
	return p, nil
}

// paths are the files of one host pod's run dir.
type paths struct{ socket, state string }

func podPaths(runDir string) paths {
	return paths{socket: filepath.Join(runDir, "agent.sock"), state: filepath.Join(runDir, "containers")}
}

// Command is the agent's command line: in the pod's network namespace
// through nsenter (which execs in place, so the recorded pid is the
// agent's) unless the pod shares the host's.
func Command(agent, nsenter string, spec *vm.Spec, tokenFile string, systemd bool, level logrus.Level) []string {
	p := podPaths(spec.RunDir)
	var argv []string
	if spec.Netns != "" {
		argv = append(argv, nsenter, "--net="+spec.Netns, "--")
	}
	argv = append(argv, agent, agentapi.HostModeArg, "--socket", p.socket, "--token-file", tokenFile, "--state-dir", p.state, "--log-level", level.String())
	if systemd {
		argv = append(argv, "--systemd-cgroup")
	}
	return argv
}

// Create starts the pod's agent and waits until it listens.
func (d *Driver) Create(ctx context.Context, spec *vm.Spec) (vm.VMM, error) {
	switch {
	case spec.ID == "" || !filepath.IsAbs(spec.RunDir):
		return nil, errors.New("host: spec needs an ID and an absolute RunDir")
	case len(spec.Shares) > 0 || len(spec.NICs) > 0 || len(spec.Disks) > 0:
		return nil, errors.New("host: a host pod has no shares, NICs or disks")
	}
	agent, err := d.agentBinary()
	if err != nil {
		return nil, err
	}
	nsenter := ""
	if spec.Netns != "" {
		if nsenter, err = exec.LookPath("nsenter"); err != nil {
			return nil, fmt.Errorf("host: nsenter (util-linux) puts the agent in the pod's netns: %w", err)
		}
	}
	log := d.opts.Log.WithField("pod", spec.ID)
	v := &hostVM{paths: podPaths(spec.RunDir), log: log}
	v.Supervisor = vm.NewSupervisor(vm.State{Driver: Name, ID: spec.ID, RunDir: spec.RunDir, AgentSocket: v.paths.socket}, processName, v.terminate, log)
	var tokenFile string
	err = v.Launch(ctx, spec, vm.Launch{
		Pipeline: "host-create",
		Prepare: []pipeline.Step{{Name: "agent-token", Run: func(context.Context) (func() error, error) {
			var err error
			tokenFile, v.token, err = vm.NewAgentToken(spec.RunDir)
			return nil, err // the run dir's undo removes it
		}}},
		Command: func([]string) (*exec.Cmd, error) {
			argv := Command(agent, nsenter, spec, tokenFile, d.opts.SystemdCgroup, d.opts.Log.Logger.GetLevel())
			return exec.Command(argv[0], argv[1:]...), nil
		},
		Ready: []pipeline.Step{{Name: "listening", Run: func(ctx context.Context) (func() error, error) {
			return nil, v.waitListening(ctx)
		}}},
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Adopt re-attaches to an agent a previous cocoond started. Its containers
// kept running meanwhile: they are its children.
func (d *Driver) Adopt(ctx context.Context, st *vm.State) (vm.VMM, error) {
	if st.Driver != Name {
		return nil, fmt.Errorf("host: state belongs to driver %q", st.Driver)
	}
	log := d.opts.Log.WithField("pod", st.ID)
	v := &hostVM{paths: podPaths(st.RunDir), log: log}
	v.Supervisor = vm.NewSupervisor(*st, processName, v.terminate, log)
	err := v.Supervisor.Adopt(ctx, func(ctx context.Context) (func() error, error) {
		token, err := vm.ReadAgentToken(st.RunDir)
		if err != nil {
			return nil, err
		}
		v.token = token
		return nil, v.waitListening(ctx)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// hostVM is one host pod's agent.
type hostVM struct {
	*vm.Supervisor
	paths paths
	token []byte
	log   *logrus.Entry
}

// waitListening dials the agent's socket until it answers, the agent exits,
// or readyTimeout passes.
func (v *hostVM) waitListening(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", v.paths.socket)
		if err == nil {
			return conn.Close()
		}
		select {
		case <-v.Done():
			return fmt.Errorf("%w%s", v.Err(), v.logTail())
		case <-ctx.Done():
			return fmt.Errorf("agent socket %s: %w (last: %v)%s", v.paths.socket, ctx.Err(), err, v.logTail())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// terminate is the graceful stop: SIGTERM makes the agent remove every
// container and exit (the supervisor kills it after vm.StopGrace).
func (v *hostVM) terminate(context.Context) error {
	st := v.State()
	p, err := os.FindProcess(st.Pid)
	if err != nil {
		return err
	}
	if !(vm.Process{Pid: st.Pid, StartTime: st.StartTime}).Alive() {
		return nil
	}
	return p.Signal(syscall.SIGTERM)
}

// Start implements vm.VMM: the agent already runs.
func (v *hostVM) Start(context.Context) error { return v.Err() }

// Resize implements vm.VMM: there is no VM to size; a host pod's containers
// carry their limits in their own cgroups.
func (v *hostVM) Resize(context.Context, uint32, uint64) error { return nil }

// DialAgent implements vm.VMM: the agent's socket, with the pod's token.
func (v *hostVM) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := v.Err(); err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", v.paths.socket)
	if err != nil {
		return nil, err
	}
	return &agentclient.TokenConn{Conn: conn, Token: v.token}, nil
}

// logTail adds the end of the agent's log to an error.
func (v *hostVM) logTail() string {
	if s := vm.FileTail(vm.VMMLog(v.State().RunDir, processName), 600); s != "" {
		return " (cocoon-agent: " + s + ")"
	}
	return ""
}
