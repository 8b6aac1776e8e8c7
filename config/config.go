// Package config holds cocoond's configuration: one struct per TOML section,
// embedded defaults, drop-in merging (load.go) and per-section validation.
package config

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
)

// Config is the effective configuration of cocoond.
type Config struct {
	Daemon    Daemon    `toml:"daemon" json:"daemon" comment:"The daemon: socket, state directories, logging."`
	Image     Image     `toml:"image" json:"image" comment:"The image service: containers/storage and registry settings."`
	CNI       CNI       `toml:"cni" json:"cni" comment:"Pod networking through CNI plugins."`
	Runtime   Runtime   `toml:"runtime" json:"runtime" comment:"Runtime handlers: which VMM, guest and VM size a pod gets."`
	Streaming Streaming `toml:"streaming" json:"streaming" comment:"The exec/attach/port-forward server kubelet and crictl are sent to."`
	Metrics   Metrics   `toml:"metrics" json:"metrics" comment:"Prometheus metrics."`
	Debug     Debug     `toml:"debug" json:"debug" comment:"Break-glass access for operators."`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Address string `toml:"address" json:"address" comment:"host:port serving /metrics; empty turns metrics off. Keep it on loopback or behind a firewall."`
}

// Validate checks the metrics section.
func (m *Metrics) Validate() []*FieldError {
	if m.Address == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(m.Address); err != nil {
		return []*FieldError{fieldErr("metrics.address", "%v", err)}
	}
	return nil
}

// Debug configures operator access into pod VMs.
type Debug struct {
	Console bool `toml:"console" json:"console" comment:"Allow 'cocoon debug-console <pod>': a root shell in the pod VM, outside the containers. Off in production."`
}

// Streaming configures the streaming server.
type Streaming struct {
	Address     string   `toml:"address" json:"address" comment:"host:port to listen on; port 0 picks a free one. Keep it on loopback unless kubelet's API server proxy needs it elsewhere."`
	IdleTimeout Duration `toml:"idle_timeout" json:"idle_timeout" comment:"How long an idle exec/attach/port-forward connection stays open."`
}

// Validate checks the streaming section.
func (s *Streaming) Validate() []*FieldError {
	var errs []*FieldError
	if _, _, err := net.SplitHostPort(s.Address); err != nil {
		errs = append(errs, fieldErr("streaming.address", "%v", err))
	}
	if s.IdleTimeout <= 0 {
		errs = append(errs, fieldErr("streaming.idle_timeout", "must be positive"))
	}
	return errs
}

// Daemon configures the process itself.
type Daemon struct {
	Socket          string   `toml:"socket" json:"socket" comment:"CRI gRPC socket kubelet and crictl connect to (mode 0660)."`
	StateDir        string   `toml:"state_dir" json:"state_dir" comment:"Persistent state: sandbox metadata, image storage, guest assets."`
	RuntimeDir      string   `toml:"runtime_dir" json:"runtime_dir" comment:"Volatile state lost at reboot: per-sandbox sockets, netns mounts."`
	LogLevel        string   `toml:"log_level" json:"log_level" comment:"panic, fatal, error, warn, info, debug or trace."`
	LogFormat       string   `toml:"log_format" json:"log_format" comment:"auto (JSON unless stderr is a terminal), json or text."`
	CgroupDriver    string   `toml:"cgroup_driver" json:"cgroup_driver" comment:"Host cgroup driver: cgroupfs or systemd, as kubelet's cgroupDriver (RuntimeConfig reports it). Pods' VMMs and virtiofsd go into kubelet's pod cgroups with it."`
	ShutdownTimeout Duration `toml:"shutdown_timeout" json:"shutdown_timeout" comment:"How long SIGTERM waits for in-flight RPCs before closing them."`
}

// AdminSocket is cocoond's admin socket (root only; `cocoon debug-console`
// talks to it): admin.sock in the runtime directory.
func (d *Daemon) AdminSocket() string { return filepath.Join(d.RuntimeDir, "admin.sock") }

// Image configures pulls and the local image store.
type Image struct {
	GraphRoot            string   `toml:"graph_root" json:"graph_root" comment:"containers/storage graph root."`
	RunRoot              string   `toml:"run_root" json:"run_root" comment:"containers/storage run root."`
	Driver               string   `toml:"driver" json:"driver" comment:"Storage driver: overlay (falls back to vfs when the kernel lacks overlayfs) or vfs."`
	RegistriesConf       string   `toml:"registries_conf" json:"registries_conf" comment:"registries.conf: mirrors, insecure registries, short names."`
	RegistriesConfDir    string   `toml:"registries_conf_dir" json:"registries_conf_dir" comment:"Drop-in directory for registries.conf."`
	SignaturePolicy      string   `toml:"signature_policy" json:"signature_policy" comment:"policy.json; when the file is missing every image is accepted, with a warning."`
	AuthFile             string   `toml:"auth_file" json:"auth_file" comment:"auth.json with registry credentials, used when a pull carries none. Empty: none."`
	PullProgressInterval Duration `toml:"pull_progress_interval" json:"pull_progress_interval" comment:"How often pull progress is logged."`
	MaxParallelDownloads uint     `toml:"max_parallel_downloads" json:"max_parallel_downloads" comment:"Layers fetched at once per pull (0: the library default)."`
}

// CNI configures where network configuration and plugins are found.
type CNI struct {
	ConfDir string   `toml:"conf_dir" json:"conf_dir" comment:"Directory of .conflist/.conf files; the first in lexical order is used."`
	BinDirs []string `toml:"bin_dirs" json:"bin_dirs" comment:"Directories searched for CNI plugin binaries."`
}

// Duration is a time.Duration that reads and writes as a Go duration string ("5s").
type Duration time.Duration

// UnmarshalText parses "1m30s" style strings.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Std returns the value as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// FieldError names the key of a bad value so the loader can name its file too.
type FieldError struct {
	Key string
	Msg string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Msg }

func fieldErr(key, format string, args ...any) *FieldError {
	return &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

func requireAbs(key, path string) *FieldError {
	if path == "" {
		return fieldErr(key, "must be set")
	}
	if !filepath.IsAbs(path) {
		return fieldErr(key, "must be an absolute path, got %q", path)
	}
	return nil
}

func oneOf(key, value string, allowed ...string) *FieldError {
	if !slices.Contains(allowed, value) {
		return fieldErr(key, "must be one of %v, got %q", allowed, value)
	}
	return nil
}

func collect(errs ...*FieldError) []*FieldError {
	var out []*FieldError
	for _, e := range errs {
		if e != nil {
			out = append(out, e)
		}
	}
	return out
}

// Validate checks the daemon section.
func (d *Daemon) Validate() []*FieldError {
	errs := collect(
		requireAbs("daemon.socket", d.Socket),
		requireAbs("daemon.state_dir", d.StateDir),
		requireAbs("daemon.runtime_dir", d.RuntimeDir),
		oneOf("daemon.log_format", d.LogFormat, "auto", "json", "text"),
		oneOf("daemon.cgroup_driver", d.CgroupDriver, "cgroupfs", "systemd"),
	)
	if _, err := logrus.ParseLevel(d.LogLevel); err != nil {
		errs = append(errs, fieldErr("daemon.log_level", "%v", err))
	}
	if d.ShutdownTimeout < 0 {
		errs = append(errs, fieldErr("daemon.shutdown_timeout", "must not be negative"))
	}
	return errs
}

// Validate checks the image section.
func (i *Image) Validate() []*FieldError {
	errs := collect(
		requireAbs("image.graph_root", i.GraphRoot),
		requireAbs("image.run_root", i.RunRoot),
		oneOf("image.driver", i.Driver, "overlay", "vfs"),
		requireAbs("image.registries_conf", i.RegistriesConf),
		requireAbs("image.signature_policy", i.SignaturePolicy),
	)
	if i.RegistriesConfDir != "" && !filepath.IsAbs(i.RegistriesConfDir) {
		errs = append(errs, fieldErr("image.registries_conf_dir", "must be an absolute path, got %q", i.RegistriesConfDir))
	}
	if i.AuthFile != "" && !filepath.IsAbs(i.AuthFile) {
		errs = append(errs, fieldErr("image.auth_file", "must be an absolute path, got %q", i.AuthFile))
	}
	if i.PullProgressInterval <= 0 {
		errs = append(errs, fieldErr("image.pull_progress_interval", "must be positive"))
	}
	return errs
}

// Validate checks the cni section.
func (c *CNI) Validate() []*FieldError {
	errs := collect(requireAbs("cni.conf_dir", c.ConfDir))
	if len(c.BinDirs) == 0 {
		errs = append(errs, fieldErr("cni.bin_dirs", "must name at least one directory"))
	}
	for _, dir := range c.BinDirs {
		if e := requireAbs("cni.bin_dirs", dir); e != nil {
			errs = append(errs, e)
		}
	}
	return errs
}

// Validate checks every section.
func (c *Config) Validate() []*FieldError {
	var errs []*FieldError
	errs = append(errs, c.Daemon.Validate()...)
	errs = append(errs, c.Image.Validate()...)
	errs = append(errs, c.CNI.Validate()...)
	errs = append(errs, c.Runtime.Validate()...)
	errs = append(errs, c.Streaming.Validate()...)
	errs = append(errs, c.Metrics.Validate()...)
	return errs
}
