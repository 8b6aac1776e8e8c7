package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/admin"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// scriptPods has one ready pod, "web", whose shell prints its stdin and
// exits with the number after "exit " in it.
type scriptPods struct{}

func (scriptPods) FindPod(ref string) (admin.PodInfo, error) {
	if ref != "web" {
		return admin.PodInfo{}, fmt.Errorf("%w: no pod has the ID, ID prefix or name %q", errdefs.ErrNotFound, ref)
	}
	return admin.PodInfo{ID: "web-id", State: "READY", Ready: true}, nil
}

func (scriptPods) DebugConsole(_ context.Context, _ string, req admin.ConsoleRequest, stdin io.Reader, stdout, _ io.WriteCloser, _ <-chan admin.Size) (int32, error) {
	script, _ := io.ReadAll(stdin)
	fmt.Fprintf(stdout, "tty=%v script=%s", req.TTY, script)
	var code int32
	if _, after, ok := strings.Cut(string(script), "exit "); ok {
		_, _ = fmt.Sscan(after, &code) // a script without a code exits 0
	}
	return code, nil
}

// startAdmin serves scriptPods on a socket named by a config file, as cocoond would.
func startAdmin(t *testing.T, enabled bool) (configPath string) {
	t.Helper()
	dir := t.TempDir()
	configPath = filepath.Join(dir, "cocoon.toml")
	runDir := filepath.Join(dir, "run")
	if err := os.WriteFile(configPath, []byte(fmt.Sprintf("[daemon]\nruntime_dir = %q\n", runDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	l, err := admin.Listen(filepath.Join(runDir, "admin.sock"), logrus.NewEntry(log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := admin.New(scriptPods{}, admin.Options{DebugConsole: enabled, ConfigPath: configPath, Log: logrus.NewEntry(log)})
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return configPath
}

// runCLI runs the command with stdin from a pipe (no terminal) and returns
// its exit code, stdout and stderr.
func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	if err := os.WriteFile(in, []byte(stdin), 0o644); err != nil {
		t.Fatal(err)
	}
	inF, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer inF.Close()
	outF, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer outF.Close()
	var stderr strings.Builder
	code := runDebugConsole(args, inF, outF, &stderr)
	got, _ := os.ReadFile(out)
	return code, string(got), stderr.String()
}

func TestDebugConsoleCLI(t *testing.T) {
	enabled := startAdmin(t, true)
	disabled := startAdmin(t, false)
	for _, tt := range []struct {
		name       string
		stdin      string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"script and its exit code", "echo hi; exit 3", []string{"--config", enabled, "web"}, 3, "tty=false script=echo hi; exit 3", ""},
		{"admin socket named directly", "true", []string{"--admin-socket", filepath.Join(filepath.Dir(enabled), "run", "admin.sock"), "web"}, 0, "script=true", ""},
		{"unknown pod", "", []string{"--config", enabled, "nope"}, 1, "", `no pod has the ID, ID prefix or name "nope"`},
		{"console disabled", "", []string{"--config", disabled, "web"}, 1, "", "debug console is disabled: set [debug] console = true in " + disabled},
		{"no daemon", "", []string{"--admin-socket", "/nonexistent/admin.sock", "web"}, 1, "", "is cocoond running?"},
		{"missing config file", "", []string{"--config", "/nonexistent/cocoon.toml", "web"}, 1, "", "no such file"},
		{"no pod given", "", []string{"--config", enabled}, 2, "", "Usage: cocoon debug-console"},
		{"two pods given", "", []string{"--config", enabled, "a", "b"}, 2, "", "Usage: cocoon debug-console"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.stdin, tt.args...)
			if code != tt.wantCode || !strings.Contains(stdout, tt.wantStdout) || !strings.Contains(stderr, tt.wantStderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, stdout, stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}
