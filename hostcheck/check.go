package hostcheck

import (
	"context"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/config"
)

// Options configure Run.
type Options struct {
	// Boot boots a probe VM with every handler after the host checks.
	Boot bool
	// Booter boots the probe VMs; nil means the real drivers (NewBooter).
	Booter Booter
	// KVMTimeout bounds a qemu handler's KVM attempt; 0 means the deadline
	// accel = "auto" gives it.
	KVMTimeout time.Duration
	// TempDir holds the probe VMs' run dirs; "" means os.TempDir().
	TempDir string
}

// Run checks the host against the loaded configuration, reporting each result
// as soon as it is known (a boot takes seconds), and returns them all.
func Run(ctx context.Context, h *Host, loaded *config.Loaded, opts Options, report func(Result)) []Result {
	var results []Result
	emit := func(rs ...Result) {
		for _, r := range rs {
			results = append(results, r)
			report(r)
		}
	}
	cfg := &loaded.Config
	emit(ConfigResult(loaded, nil))
	emit(h.checkRoot(), h.checkCgroup(cfg.Daemon.CgroupDriver), h.checkNetns(), h.checkTun(),
		h.checkOverlay(cfg.Image.Driver), h.checkVsock(), h.checkKVM())
	emit(h.checkVMMs(ctx, cfg.Runtime)...)
	emit(h.checkConfinement(ctx, cfg.Runtime))
	emit(h.checkVirtiofsd(ctx))
	emit(checkGuests(cfg.Runtime)...)
	emit(checkCNI(cfg.CNI), h.checkDirs(cfg))
	if opts.Boot {
		h.bootAll(ctx, cfg.Runtime, opts, emit)
	}
	return results
}

// ConfigResult reports how loading the configuration went: the files it
// came from, or why it is unusable (err from config.Load).
func ConfigResult(loaded *config.Loaded, err error) Result {
	if err != nil {
		return problem(Fail, "config", "correct the file and key named above (cocoond refuses to start with it too)", "%v", err)
	}
	return ok("config", "loaded from %s", strings.Join(loaded.Sources(), ", "))
}
