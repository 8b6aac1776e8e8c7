package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"

	"github.com/cocoon-runtime/cocoon/admin"
	"github.com/cocoon-runtime/cocoon/cni"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/cri"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/metrics"
	"github.com/cocoon-runtime/cocoon/sandbox"
	"github.com/cocoon-runtime/cocoon/sandbox/podcgroup"
	"github.com/cocoon-runtime/cocoon/version"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/clh"
	vmhost "github.com/cocoon-runtime/cocoon/vm/host"
	"github.com/cocoon-runtime/cocoon/vm/qemu"
)

// maxMsgSize matches kubelet's CRI client limit.
const maxMsgSize = 16 << 20

// serve runs the daemon on loaded; configPath is the file the operator edits
// (named in messages such as the debug console's refusal).
func serve(loaded *config.Loaded, configPath string) error {
	cfg := &loaded.Config
	log, err := setupLogging(cfg.Daemon)
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"version": version.Version, "config": sources(loaded)}).Info("cocoond starting")
	// Crash-consistency tests make cocoond SIGKILL itself at a named step
	// ("run-pod/network", "qemu-create/qemu", "stop-pod/vm-stopped"...).
	// Read once, here; unset (always, outside those tests) it does nothing.
	if point := os.Getenv("COCOON_TEST_CRASH_AT"); point != "" {
		log.WithField("point", point).Warn("COCOON_TEST_CRASH_AT is set: cocoond will SIGKILL itself at that point (a test hook)")
		pipeline.SetCrashPoint(point)
	}

	for _, dir := range []string{cfg.Daemon.StateDir, cfg.Daemon.RuntimeDir} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return err
		}
	}
	// Observations are cheap, so the hooks are always wired; only the
	// endpoint is optional.
	stats := metrics.New(cfg.Runtime.HandlerNames())
	images, err := image.New(cfg.Image, log.WithField("component", "image"), image.WithPullObserver(stats))
	if err != nil {
		return err
	}
	defer func() {
		if err := images.Close(); err != nil {
			log.WithError(err).Warn("closing image store")
		}
	}()
	log.WithFields(logrus.Fields{"driver": images.Driver(), "graph_root": images.GraphRoot()}).Info("image store ready")

	// Pods' VMMs and helpers go into kubelet's pod cgroups, with the driver
	// kubelet is told about (RuntimeConfig).
	cgroupManager, err := podcgroup.New(cfg.Daemon.CgroupDriver)
	if err != nil {
		return err
	}

	var server *cri.Server
	paths := cfg.Paths()
	qemuDriver := qemu.New(qemu.Options{Log: log.WithField("component", "qemu"), DebugConsole: cfg.Debug.Console, TemplateDir: paths.TemplateDir})
	defer qemuDriver.Close() // ends template builds
	pods, err := sandbox.New(sandbox.Options{
		StateDir: paths.PodStateDir,
		RunDir:   paths.PodRunDir,
		VMDir:    paths.VMDir,
		Runtime:  cfg.Runtime,
		Drivers: map[string]vm.Driver{
			// [debug] console is also the agents' policy: their VMs boot
			// with cocoon.debug_console=1 only then.
			"qemu": qemuDriver,
			"clh":  clh.New(clh.Options{Log: log.WithField("component", "clh"), DebugConsole: cfg.Debug.Console}),
			// Host pods: cocoon-agent in host mode, beside cocoond.
			sandbox.HostDriver: vmhost.New(vmhost.Options{Log: log.WithField("component", "host"), SystemdCgroup: cfg.Daemon.CgroupDriver == "systemd"}),
		},
		Network: &sandbox.CNINetwork{
			NetnsRoot: paths.NetnsDir,
			CNI: cni.NewManager(cni.Options{
				ConfDir: cfg.CNI.ConfDir, BinDirs: cfg.CNI.BinDirs,
				StateDir: paths.CNIStateDir, Log: log.WithField("component", "cni"),
			}),
		},
		Cgroups:    cgroupManager,
		Images:     images,
		Log:        log.WithField("component", "sandbox"),
		Boot:       stats,
		AgentCalls: stats,
	}, func() string { return server.PodCIDR() })
	if err != nil {
		return err
	}
	stats.WatchSandboxes(pods)
	// Pods and VMs outlive cocoond: take them back before serving.
	if err := pods.Recover(context.Background()); err != nil {
		log.WithError(err).Warn("recovering pods")
	}
	// After Recover, which reclaims the warm VMs a previous cocoond left.
	pods.StartPools(nil)

	streams, err := cri.NewStreamingServer(cfg.Streaming.Address, cfg.Streaming.IdleTimeout.Std(), pods)
	if err != nil {
		return fmt.Errorf("streaming server: %w", err)
	}
	go func() {
		if err := streams.Start(true); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("streaming server stopped")
		}
	}()
	defer func() {
		if err := streams.Stop(); err != nil {
			log.WithError(err).Warn("stopping streaming server")
		}
	}()

	adminCtx, stopAdmin := context.WithCancel(context.Background())
	defer stopAdmin()
	adminDone, err := serveAdmin(adminCtx, cfg, configPath, pods, log.WithField("component", "admin"))
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer os.Remove(cfg.Daemon.AdminSocket())

	server = cri.New(images, cni.Probe{ConfDir: cfg.CNI.ConfDir, BinDirs: cfg.CNI.BinDirs}, pods, streams, cri.Options{
		CgroupDriver: cfg.Daemon.CgroupDriver,
		Handlers:     cfg.Runtime.HandlerNames(),
		GraphRoot:    images.GraphRoot(),
		StatusInfo:   statusInfo(cfg, images.Driver()),
		Requests:     stats,
	}, log.WithField("component", "cri"))
	g := grpc.NewServer(
		grpc.UnaryInterceptor(server.Instrument),
		grpc.StreamInterceptor(server.InstrumentStream),
		grpc.MaxRecvMsgSize(maxMsgSize),
		grpc.MaxSendMsgSize(maxMsgSize),
	)
	server.Register(g)

	if cfg.Metrics.Address != "" {
		stop, err := serveMetrics(cfg.Metrics.Address, stats.Handler(), log)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		defer stop()
	}

	lis, err := admin.BindSocket(cfg.Daemon.Socket, 0o660)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Daemon.Socket)

	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	log.WithField("socket", cfg.Daemon.Socket).Info("serving CRI")
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.WithError(err).Warn("sd_notify READY failed")
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	select {
	case sig := <-sigs:
		log.WithField("signal", sig.String()).Info("shutting down")
	case err := <-served:
		return fmt.Errorf("grpc server stopped: %w", err)
	case err := <-adminDone:
		return fmt.Errorf("admin server stopped: %v", err)
	}
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	// Debug consoles end first: their shells are killed while the agents
	// are still reachable.
	stopAdmin()
	if err := <-adminDone; err != nil {
		log.WithError(err).Warn("admin server stopped")
	}
	stopGracefully(g, cfg.Daemon.ShutdownTimeout.Std(), log)
	// Warm VMs are not kept across a restart: stop them now rather than
	// leave them to the next start's sweep.
	poolCtx, cancelPools := context.WithTimeout(context.Background(), cfg.Daemon.ShutdownTimeout.Std()+30*time.Second)
	if err := pods.StopPools(poolCtx); err != nil {
		log.WithError(err).Warn("stopping the warm pools")
	}
	cancelPools()
	// The pods keep running for the next cocoond: hand their logs over
	// without losing what is in flight.
	dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	pods.Detach(dctx)
	cancel()
	log.Info("cocoond stopped")
	return nil
}

// serveMetrics serves /metrics on addr and logs the address it bound (addr
// may ask for port 0). stop shuts the server down, waiting briefly for
// scrapes in flight.
func serveMetrics(addr string, h http.Handler, log *logrus.Logger) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("metrics server stopped")
		}
	}()
	log.WithField("address", lis.Addr().String()).Info("serving metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// stopGracefully lets in-flight RPCs finish, then cuts the rest off.
func stopGracefully(g *grpc.Server, timeout time.Duration, log *logrus.Logger) {
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		log.WithField("timeout", timeout.String()).Warn("RPCs still running at shutdown, closing them")
		g.Stop()
	}
}

func setupLogging(d config.Daemon) (*logrus.Logger, error) {
	log := logrus.StandardLogger()
	level, err := logrus.ParseLevel(d.LogLevel)
	if err != nil {
		return nil, err
	}
	log.SetLevel(level)
	log.SetOutput(os.Stderr)
	useJSON := d.LogFormat == "json"
	if d.LogFormat == "auto" {
		st, err := os.Stderr.Stat()
		useJSON = err != nil || st.Mode()&os.ModeCharDevice == 0
	}
	if useJSON {
		log.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	} else {
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339Nano})
	}
	return log, nil
}

// statusInfo is what `crictl info` shows beyond the conditions.
func statusInfo(cfg *config.Config, driver string) map[string]string {
	b, _ := json.Marshal(cfg)
	return map[string]string{
		"config":        string(b),
		"storageDriver": driver,
		"version":       version.Version,
	}
}
