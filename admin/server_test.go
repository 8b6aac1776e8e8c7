package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// fakePods knows pods by name and runs a fake shell: it waits for a first
// resize when it has a terminal, reads stdin to EOF, echoes it, and exits
// with code.
type fakePods struct {
	pods     map[string]PodInfo
	code     int32
	shellErr error

	mu      sync.Mutex
	ran     []ConsoleRequest
	resizes []Size
	ctxDone bool
}

func (f *fakePods) FindPod(ref string) (PodInfo, error) {
	if ref == "twins" {
		return PodInfo{}, fmt.Errorf("%w: %q names 2 pods", errdefs.ErrInvalidArgument, ref)
	}
	p, ok := f.pods[ref]
	if !ok {
		return PodInfo{}, fmt.Errorf("%w: no pod has the ID, ID prefix or name %q", errdefs.ErrNotFound, ref)
	}
	return p, nil
}

func (f *fakePods) DebugConsole(ctx context.Context, podID string, req ConsoleRequest, stdin io.Reader, stdout, stderr io.WriteCloser, resize <-chan Size) (int32, error) {
	f.mu.Lock()
	f.ran = append(f.ran, req)
	f.mu.Unlock()
	if f.shellErr != nil {
		return 0, f.shellErr
	}
	if req.TTY {
		select {
		case sz := <-resize:
			f.mu.Lock()
			f.resizes = append(f.resizes, sz)
			f.mu.Unlock()
		case <-time.After(5 * time.Second):
			return 0, errors.New("no resize came")
		}
	}
	read := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(stdin); read <- b }()
	select {
	case b := <-read:
		fmt.Fprintf(stdout, "%s got %q", podID, b)
		fmt.Fprint(stderr, "to stderr")
		return f.code, nil
	case <-ctx.Done():
		f.mu.Lock()
		f.ctxDone = true
		f.mu.Unlock()
		return 0, ctx.Err()
	}
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// serve runs a Server on a fresh admin socket and returns its path.
func serve(t *testing.T, pods Pods, opts Options) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(sock, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	opts.Log = quietLog()
	go func() { done <- New(pods, opts).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("admin socket left behind: %v", err)
		}
	})
	return sock
}

func testPods() *fakePods {
	return &fakePods{code: 3, pods: map[string]PodInfo{
		"web":     {ID: "web-id", State: "READY", Ready: true},
		"stopped": {ID: "stopped-id", State: "NOTREADY"},
	}}
}

func TestDebugConsoleRefusals(t *testing.T) {
	for _, tt := range []struct {
		name    string
		enabled bool
		pod     string
		want    string
	}{
		{"disabled", false, "web", "debug console is disabled: set [debug] console = true in /etc/cocoon/test.toml"},
		{"unknown pod", true, "nope", `no pod has the ID, ID prefix or name "nope"`},
		{"ambiguous name", true, "twins", `"twins" names 2 pods`},
		{"pod not ready", true, "stopped", "pod stopped-id is NOTREADY: its VM is not running"},
		{"no pod", true, "", "no pod named"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pods := testPods()
			sock := serve(t, pods, Options{DebugConsole: tt.enabled, ConfigPath: "/etc/cocoon/test.toml"})
			code, err := DebugConsole(context.Background(), sock, ConsoleRequest{Pod: tt.pod}, strings.NewReader("id\n"), io.Discard, io.Discard, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %d, %v; want an error with %q", code, err, tt.want)
			}
			if len(pods.ran) != 0 {
				t.Fatalf("a shell ran: %+v", pods.ran)
			}
		})
	}
}

func TestDebugConsoleSession(t *testing.T) {
	pods := testPods()
	sock := serve(t, pods, Options{DebugConsole: true})
	var stdout, stderr strings.Builder
	resize := make(chan Size, 1)
	resize <- Size{Rows: 50, Cols: 132}
	req := ConsoleRequest{Pod: "web", Term: "xterm", TTY: true, Size: Size{Rows: 24, Cols: 80}}
	code, err := DebugConsole(context.Background(), sock, req, strings.NewReader("echo hello-from-vm; exit 3\n"), &stdout, &stderr, resize)
	if err != nil || code != 3 {
		t.Fatalf("got %d, %v; want exit 3", code, err)
	}
	if want := `web-id got "echo hello-from-vm; exit 3\n"`; stdout.String() != want || stderr.String() != "to stderr" {
		t.Fatalf("stdout %q stderr %q, want %q", stdout.String(), stderr.String(), want)
	}
	if len(pods.ran) != 1 || pods.ran[0] != req || len(pods.resizes) != 1 || pods.resizes[0] != (Size{Rows: 50, Cols: 132}) {
		t.Fatalf("shell ran with %+v, resizes %v", pods.ran, pods.resizes)
	}
}

func TestDebugConsoleSessionErrors(t *testing.T) {
	pods := testPods()
	pods.shellErr = fmt.Errorf("%w: the guest has no /bin/sh", errdefs.ErrFailedPrecondition)
	sock := serve(t, pods, Options{DebugConsole: true})
	if _, err := DebugConsole(context.Background(), sock, ConsoleRequest{Pod: "web"}, nil, io.Discard, io.Discard, nil); err == nil ||
		!strings.Contains(err.Error(), "the guest has no /bin/sh") {
		t.Fatalf("session error not carried to the client: %v", err)
	}
}

// TestDebugConsoleClientLeaves: the shell's context ends with the client.
func TestDebugConsoleClientLeaves(t *testing.T) {
	pods := testPods()
	sock := serve(t, pods, Options{DebugConsole: true})
	stdin, typing := io.Pipe() // an operator who never types
	defer typing.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := DebugConsole(ctx, sock, ConsoleRequest{Pod: "web"}, stdin, io.Discard, io.Discard, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the deadline", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		pods.mu.Lock()
		done := pods.ctxDone
		pods.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the shell outlived its client")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDebugConsoleNeedsUpgrade(t *testing.T) {
	sock := serve(t, testPods(), Options{DebugConsole: true})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, tt := range []struct {
		method, query string
		want          int
	}{
		{http.MethodPost, "?pod=web", http.StatusUpgradeRequired},
		{http.MethodGet, "?pod=web", http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tt.method, "http://cocoond"+ConsolePath+tt.query, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s %s: %s, want %d", tt.method, tt.query, resp.Status, tt.want)
		}
	}
}

func TestParseConsoleRequest(t *testing.T) {
	for _, tt := range []struct {
		query   string
		want    ConsoleRequest
		wantErr string
	}{
		{"pod=web&term=xterm&tty=1&rows=24&cols=80", ConsoleRequest{Pod: "web", Term: "xterm", TTY: true, Size: Size{24, 80}}, ""},
		{"pod=abc123", ConsoleRequest{Pod: "abc123"}, ""},
		{"pod=web&rows=-1", ConsoleRequest{}, "rows"},
		{"pod=web&cols=70000", ConsoleRequest{}, "cols"},
		{"term=xterm", ConsoleRequest{}, "no pod named"},
	} {
		r, _ := http.NewRequest(http.MethodPost, ConsolePath+"?"+tt.query, nil)
		got, err := parseConsoleRequest(r)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: %v, want %q", tt.query, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v", tt.query, got, err, tt.want)
		}
	}
}

func TestListen(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "admin.sock")
	// A stale socket file from a crashed daemon is replaced.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(sock, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v, %v; want a socket with mode 0600", st.Mode(), err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A live one is not stolen.
	if _, err := Listen(sock, quietLog()); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Listen: %v", err)
	}
}

// TestPeerFilter: connections from users the filter refuses are closed
// before a byte is read (the real filter admits uid 0 only).
func TestPeerFilter(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	inner, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	me := uint32(os.Getuid())
	l := &peerFilter{Listener: inner, allow: func(uid uint32) bool { return uid != me }, log: quietLog()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(testPods(), Options{DebugConsole: true, Log: quietLog()}).Serve(ctx, l) }()
	defer func() { cancel(); <-done }()
	_, err = DebugConsole(context.Background(), sock, ConsoleRequest{Pod: "web"}, nil, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "only root") {
		t.Fatalf("refused peer got %v", err)
	}
}

func TestDebugConsoleNoDaemon(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody listens on: a crashed cocoond's
	for sock, want := range map[string]string{
		filepath.Join(dir, "missing.sock"): "no admin socket at",
		stale:                              "nothing answers on",
	} {
		if _, err := DebugConsole(context.Background(), sock, ConsoleRequest{Pod: "web"}, nil, io.Discard, io.Discard, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", filepath.Base(sock), err, want)
		}
	}
}

// TestServeEndsSessions: stopping the server ends the shells of running
// sessions before Serve returns.
func TestServeEndsSessions(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(sock, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	pods := testPods()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- New(pods, Options{DebugConsole: true, Log: quietLog()}).Serve(ctx, l) }()
	stdin, typing := io.Pipe()
	defer typing.Close()
	client := make(chan error, 1)
	go func() {
		_, err := DebugConsole(context.Background(), sock, ConsoleRequest{Pod: "web"}, stdin, io.Discard, io.Discard, nil)
		client <- err
	}()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		pods.mu.Lock()
		n := len(pods.ran)
		pods.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session never started")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	pods.mu.Lock()
	ended := pods.ctxDone
	pods.mu.Unlock()
	if !ended {
		t.Fatal("Serve returned while a shell still ran")
	}
	if err := <-client; err == nil || !strings.Contains(err.Error(), "cocoond is shutting down") {
		t.Fatalf("client: %v, want the session's error", err)
	}
}
