package ocispec

import (
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ExecProcess is the process for an exec in a container built from base: the
// container's user, environment, working directory, capabilities,
// no_new_privs, AppArmor profile and rlimits, running cmd. A terminal exec
// gets TERM=xterm unless the container's env sets TERM (containerd does the
// same, so full-screen tools work in `kubectl exec -t`).
func ExecProcess(base *specs.Spec, cmd []string, tty bool) *specs.Process {
	p := &specs.Process{Args: slices.Clone(cmd), Terminal: tty, Cwd: "/"}
	if base == nil || base.Process == nil {
		if tty {
			p.Env = []string{"TERM=xterm"}
		}
		return p
	}
	bp := base.Process
	p.User = bp.User
	p.User.AdditionalGids = slices.Clone(bp.User.AdditionalGids)
	if bp.User.Umask != nil {
		umask := *bp.User.Umask
		p.User.Umask = &umask
	}
	p.Env = slices.Clone(bp.Env)
	if tty && !slices.ContainsFunc(p.Env, func(kv string) bool { return strings.HasPrefix(kv, "TERM=") }) {
		p.Env = append(p.Env, "TERM=xterm")
	}
	if bp.Cwd != "" {
		p.Cwd = bp.Cwd
	}
	if c := bp.Capabilities; c != nil {
		p.Capabilities = &specs.LinuxCapabilities{
			Bounding:    slices.Clone(c.Bounding),
			Effective:   slices.Clone(c.Effective),
			Inheritable: slices.Clone(c.Inheritable),
			Permitted:   slices.Clone(c.Permitted),
			Ambient:     slices.Clone(c.Ambient),
		}
	}
	p.NoNewPrivileges = bp.NoNewPrivileges
	p.ApparmorProfile = bp.ApparmorProfile
	p.SelinuxLabel = bp.SelinuxLabel
	p.Rlimits = slices.Clone(bp.Rlimits)
	if bp.OOMScoreAdj != nil {
		adj := *bp.OOMScoreAdj
		p.OOMScoreAdj = &adj
	}
	return p
}
