package hostcheck

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/cni"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm/guest"
)

// guestDirs maps runtime.guest_dir and every handler's guest dir to the
// handlers booting from it (none for a runtime.guest_dir every handler overrides).
func guestDirs(rt config.Runtime) map[string][]string {
	dirs := handlersBy(rt, func(h config.Handler) string { return h.GuestDir })
	if _, ok := dirs[rt.GuestDir]; !ok {
		dirs[rt.GuestDir] = nil
	}
	return dirs
}

// checkGuests locates the guest of every handler (vmlinuz, initramfs and the
// manifest whose sizes and checksums they must match).
func checkGuests(rt config.Runtime) []Result {
	var results []Result
	dirs := guestDirs(rt)
	for _, dir := range sortedKeys(dirs) {
		handlers := dirs[dir]
		const name = "guest"
		users := handlerList(handlers)
		if len(handlers) == 0 {
			users = "runtime.guest_dir, no handler uses it"
		}
		m, err := guest.Locate(dir)
		if err != nil {
			results = append(results, problem(failOrWarn(usedByDefault(rt, handlers)), name,
				"cocoon guest build --out "+dir, "%s: %v (%s)", dir, err, users))
			continue
		}
		results = append(results, ok(name, "%s: kernel %s, agent %s (%s)", dir, m.KernelVersion, orUnknown(m.AgentVersion), users))
	}
	return results
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// checkCNI loads the network configuration exactly as cocoond's NetworkReady
// does: the first file in conf_dir that parses and whose plugins all exist.
func checkCNI(c config.CNI) Result {
	const name = "cni"
	network, err := cni.LoadDefault(c.ConfDir, c.BinDirs)
	if err != nil {
		return problem(Fail, name, cniFix(c), "%v", err)
	}
	plugins := make([]string, 0, len(network.List.Plugins))
	for _, p := range network.List.Plugins {
		plugins = append(plugins, p.Network.Type)
	}
	return ok(name, "%s: network %q, plugins %s found in %s", network.File, network.List.Name,
		strings.Join(plugins, ", "), strings.Join(c.BinDirs, ":"))
}

// cniFix names what to install or repair, from what each file lacks.
func cniFix(c config.CNI) string {
	files, err := libcni.ConfFiles(c.ConfDir, []string{".conf", ".conflist", ".json"})
	if err != nil || len(files) == 0 {
		return fmt.Sprintf("install a network configuration (.conflist) in %s: your cluster's CNI, or a bridge + host-local + portmap + loopback list", c.ConfDir)
	}
	var missing, broken []string
	for _, f := range files {
		list, err := cni.LoadFile(f)
		if err != nil {
			broken = append(broken, f)
			continue
		}
		missing = append(missing, cni.MissingPlugins(list, c.BinDirs)...)
	}
	var fixes []string
	if len(missing) > 0 {
		fixes = append(fixes, fmt.Sprintf("install plugins %s into one of %s (Debian: apt-get install containernetworking-plugins)",
			strings.Join(missing, ", "), strings.Join(c.BinDirs, ", ")))
	}
	if len(broken) > 0 {
		fixes = append(fixes, "repair or remove "+strings.Join(broken, ", "))
	}
	return strings.Join(fixes, "; ")
}

// checkDirs: cocoond creates its state and runtime dirs, so each must be a
// writable directory or be creatable in its nearest existing parent. Checked
// with access(2), so nothing is written.
func (h *Host) checkDirs(cfg *config.Config) Result {
	const name = "dirs"
	dirs := []string{cfg.Daemon.StateDir, cfg.Daemon.RuntimeDir, cfg.Image.GraphRoot, cfg.Image.RunRoot}
	var problems []string
	for _, dir := range dirs {
		if err := h.writableDir(dir); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return problem(Fail, name, "make them writable directories for root (not on a read-only mount), or point daemon.state_dir/runtime_dir and image.graph_root/run_root elsewhere",
			"%s", strings.Join(problems, "; "))
	}
	return ok(name, "writable: %s", strings.Join(dirs, ", "))
}

func (h *Host) writableDir(dir string) error {
	p := dir
	for {
		st, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && p != filepath.Dir(p) {
			p = filepath.Dir(p)
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %v", dir, err)
		}
		if !st.IsDir() {
			return fmt.Errorf("%s: %s is not a directory", dir, p)
		}
		if err := h.Access(p, unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("%s: %s is not writable: %v", dir, p, err)
		}
		return nil
	}
}
