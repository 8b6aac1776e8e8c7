package hostcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/pelletier/go-toml/v2"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/version"
	"github.com/cocoon-runtime/cocoon/vm/guest"
)

// notInstalled is the version of anything missing.
const notInstalled = "not installed"

// Env is what `cocoon env` prints: the effective configuration, where it came
// from, the paths cocoond derives from it, and the versions of every piece.
type Env struct {
	Files    []string      `toml:"files" json:"files" comment:"Where the configuration came from, in the order it was applied."`
	Versions Versions      `toml:"versions" json:"versions" comment:"Versions of cocoon's parts on this node."`
	Paths    config.Paths  `toml:"paths" json:"paths" comment:"Paths cocoond derives from the configuration."`
	Config   config.Config `toml:"config" json:"config" comment:"The effective configuration (what 'cocoond config' prints)."`
}

// Versions of the binaries and guests; a missing one is "not installed".
type Versions struct {
	Cocoon          string         `toml:"cocoon" json:"cocoon"`
	Cocoond         string         `toml:"cocoond" json:"cocoond"`
	QEMU            string         `toml:"qemu" json:"qemu"`
	CloudHypervisor string         `toml:"cloud_hypervisor" json:"cloud_hypervisor"`
	Virtiofsd       string         `toml:"virtiofsd" json:"virtiofsd"`
	Guests          []GuestVersion `toml:"guests" json:"guests"`
}

// GuestVersion is the agent and kernel of one guest dir, from its manifest.
type GuestVersion struct {
	Dir      string   `toml:"dir" json:"dir"`
	Handlers []string `toml:"handlers" json:"handlers"`
	Agent    string   `toml:"agent" json:"agent"`
	Kernel   string   `toml:"kernel" json:"kernel"`
}

// Describe gathers the environment of the loaded configuration.
func Describe(ctx context.Context, h *Host, loaded *config.Loaded) *Env {
	cfg := loaded.Config
	env := &Env{
		Files:  loaded.Sources(),
		Paths:  cfg.Paths(),
		Config: cfg,
		Versions: Versions{
			Cocoon:          fmt.Sprintf("%s (revision %s)", version.Version, version.Revision),
			Cocoond:         h.binaryVersion(ctx, h.Cocoond),
			QEMU:            h.binaryVersion(ctx, h.QEMU),
			CloudHypervisor: h.binaryVersion(ctx, h.CloudHypervisor),
			Virtiofsd:       h.binaryVersion(ctx, h.Virtiofsd),
		},
	}
	dirs := guestDirs(cfg.Runtime)
	for _, dir := range sortedKeys(dirs) {
		env.Versions.Guests = append(env.Versions.Guests, guestVersion(dir, dirs[dir]))
	}
	return env
}

func guestVersion(dir string, handlers []string) GuestVersion {
	v := GuestVersion{Dir: dir, Handlers: handlers}
	if v.Handlers == nil {
		v.Handlers = []string{}
	}
	m, err := guest.Locate(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		v.Agent, v.Kernel = notInstalled, notInstalled
	case err != nil:
		v.Agent = fmt.Sprintf("unusable (%v)", err)
		v.Kernel = v.Agent
	default:
		v.Agent, v.Kernel = orUnknown(m.AgentVersion), m.KernelVersion
	}
	return v
}

// Formats Encode writes.
const (
	FormatTOML = "toml"
	FormatJSON = "json"
)

// Encode writes env as TOML or JSON; both decode back into Env.
func (e *Env) Encode(w io.Writer, format string) error {
	switch format {
	case FormatTOML:
		return toml.NewEncoder(w).SetIndentTables(false).Encode(e)
	case FormatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(e)
	default:
		return fmt.Errorf("unknown format %q (want %s or %s)", format, FormatTOML, FormatJSON)
	}
}
