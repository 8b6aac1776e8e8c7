package main

import (
	"context"
	"io"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/admin"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/sandbox"
)

// serveAdmin binds the admin socket and serves it until ctx ends; the
// returned channel yields Serve's result once it stopped.
func serveAdmin(ctx context.Context, cfg *config.Config, configPath string, pods *sandbox.Manager, log *logrus.Entry) (<-chan error, error) {
	l, err := admin.Listen(cfg.Daemon.AdminSocket(), log)
	if err != nil {
		return nil, err
	}
	srv := admin.New(adminPods{pods}, admin.Options{DebugConsole: cfg.Debug.Console, ConfigPath: configPath, Log: log})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	log.WithFields(logrus.Fields{"socket": cfg.Daemon.AdminSocket(), "debug_console": cfg.Debug.Console}).Info("serving the admin socket")
	return done, nil
}

// adminPods adapts sandbox/ to the admin server.
type adminPods struct{ m *sandbox.Manager }

func (a adminPods) FindPod(ref string) (admin.PodInfo, error) {
	p, err := a.m.FindPod(ref)
	if err != nil {
		return admin.PodInfo{}, err
	}
	return admin.PodInfo{ID: p.ID, State: string(p.State), Ready: p.State == sandbox.StateReady}, nil
}

func (a adminPods) DebugConsole(ctx context.Context, podID string, req admin.ConsoleRequest, stdin io.Reader, stdout, stderr io.WriteCloser, resize <-chan admin.Size) (int32, error) {
	opts := sandbox.ShellOptions{Term: req.Term, TTY: req.TTY, Size: termSize(req.Size)}
	return a.m.DebugConsole(ctx, podID, opts, stdin, stdout, stderr, sandbox.Resizes(ctx, resize, termSize))
}

func termSize(s admin.Size) sandbox.TermSize { return sandbox.TermSize{Width: s.Cols, Height: s.Rows} }
