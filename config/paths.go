package config

import "path/filepath"

// Paths are the files and directories cocoond derives from the configuration.
// They are computed here alone so the daemon and the operator CLI agree.
type Paths struct {
	Socket      string `toml:"socket" json:"socket" comment:"CRI socket (daemon.socket)."`
	AdminSocket string `toml:"admin_socket" json:"admin_socket" comment:"Operator socket of the cocoon CLI."`
	PodStateDir string `toml:"pod_state_dir" json:"pod_state_dir" comment:"Persisted pod and container records."`
	PodRunDir   string `toml:"pod_run_dir" json:"pod_run_dir" comment:"Per-pod runtime dirs: the share served to the VM, pod files."`
	VMDir       string `toml:"vm_dir" json:"vm_dir" comment:"Per-VM run dirs: VMM sockets, console log, vm.json."`
	NetnsDir    string `toml:"netns_dir" json:"netns_dir" comment:"Bind mounts of pod network namespaces."`
	CNIStateDir string `toml:"cni_state_dir" json:"cni_state_dir" comment:"Conflist, runtime conf and result of every CNI ADD."`
	TemplateDir string `toml:"template_dir" json:"template_dir" comment:"Snapshot templates of the handlers that enable them: saved guest state, one dir per handler."`
}

// Paths derives the daemon's paths from the daemon section.
func (c *Config) Paths() Paths {
	run, state := c.Daemon.RuntimeDir, c.Daemon.StateDir
	return Paths{
		Socket:      c.Daemon.Socket,
		AdminSocket: c.Daemon.AdminSocket(),
		PodStateDir: filepath.Join(state, "sandboxes"),
		PodRunDir:   filepath.Join(run, "sandboxes"),
		VMDir:       filepath.Join(run, "vm"),
		NetnsDir:    filepath.Join(run, "netns"),
		CNIStateDir: filepath.Join(state, "cni"),
		TemplateDir: filepath.Join(state, "templates"),
	}
}
