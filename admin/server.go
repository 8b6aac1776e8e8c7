package admin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// ConsolePath is the one route: POST it with an Upgrade header to get a
// console session on the connection.
const ConsolePath = "/debug-console"

// ConsoleProtocol is the Upgrade token of a console session.
const ConsoleProtocol = "cocoon-console/1"

// ConsoleRequest is what the client asks for, as query parameters of
// ConsolePath: pod, term, tty (1 or 0), rows and cols.
type ConsoleRequest struct {
	Pod  string // full ID, unique ID prefix or name
	Term string // TERM for the shell
	TTY  bool   // a terminal; else pipes with stdout and stderr apart
	Size Size   // the terminal's first size
}

// PodInfo is what the server needs to know of a pod before a session.
type PodInfo struct {
	ID    string
	State string
	Ready bool // its VM runs
}

// Pods is what the admin server needs from the pod manager.
type Pods interface {
	FindPod(ref string) (PodInfo, error)
	// DebugConsole runs the shell with the given stdio until it exits.
	DebugConsole(ctx context.Context, podID string, req ConsoleRequest, stdin io.Reader, stdout, stderr io.WriteCloser, resize <-chan Size) (int32, error)
}

// Options configure the server.
type Options struct {
	// DebugConsole is the config's [debug] console: without it every
	// console request is refused.
	DebugConsole bool
	// ConfigPath is the configuration file the refusal tells the operator to edit.
	ConfigPath string
	Log        *logrus.Entry
}

// Server is cocoond's admin endpoint.
type Server struct {
	pods     Pods
	opts     Options
	sessions sessions
}

// sessions counts running console sessions (hijacked connections, which
// http.Server does not track) so Serve can wait for them to end.
type sessions struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

// start reports false once Serve is stopping: no new session then.
func (s *sessions) start() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *sessions) closeAndWait() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
}

// New returns a server over pods.
func New(pods Pods, opts Options) *Server {
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Server{pods: pods, opts: opts}
}

// Handler serves the admin routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+ConsolePath, s.debugConsole)
	return mux
}

// Listen binds the admin socket at path, mode 0600. Only root's
// connections are accepted (SO_PEERCRED), whatever the mode.
func Listen(path string, log *logrus.Entry) (net.Listener, error) {
	l, err := BindSocket(path, 0o600)
	if err != nil {
		return nil, err
	}
	return &peerFilter{Listener: l, allow: func(uid uint32) bool { return uid == 0 }, log: log}, nil
}

// BindSocket binds a unix socket of cocoond's (the CRI socket, the admin
// socket) with mode, replacing a stale socket file but refusing to steal the
// socket of a cocoond that still answers on it.
func BindSocket(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("socket %s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve answers on l until ctx ends, then closes l (removing the socket
// file) and returns once running sessions have ended their shells.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	err := srv.Serve(l)
	s.sessions.closeAndWait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// peerFilter drops connections from users allow refuses.
type peerFilter struct {
	net.Listener
	allow func(uid uint32) bool
	log   *logrus.Entry
}

func (l *peerFilter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		if err == nil && l.allow(cred.Uid) {
			return c, nil
		}
		if l.log != nil {
			l.log.WithError(err).WithField("peer", cred).Warn("admin socket: refused a connection")
		}
		c.Close()
	}
}

func peerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("not a unix socket connection")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, err
	}
	return cred, cerr
}

// DisabledMessage is the refusal when [debug] console is off.
func DisabledMessage(configPath string) string {
	return "debug console is disabled: set [debug] console = true in " + configPath
}

func (s *Server) debugConsole(w http.ResponseWriter, r *http.Request) {
	if !s.opts.DebugConsole {
		http.Error(w, DisabledMessage(s.opts.ConfigPath), http.StatusForbidden)
		return
	}
	if r.Header.Get("Upgrade") != ConsoleProtocol {
		http.Error(w, "a console needs Upgrade: "+ConsoleProtocol, http.StatusUpgradeRequired)
		return
	}
	req, err := parseConsoleRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod, err := s.pods.FindPod(req.Pod)
	if err != nil {
		http.Error(w, err.Error(), httpStatus(err))
		return
	}
	if !pod.Ready {
		http.Error(w, fmt.Sprintf("pod %s is %s: its VM is not running", pod.ID, pod.State), http.StatusConflict)
		return
	}
	if !s.sessions.start() {
		http.Error(w, "cocoond is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.sessions.wg.Done()
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{}) // a session lasts as long as the operator wants
	if _, err := fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", ConsoleProtocol); err != nil {
		return
	}
	if err := rw.Flush(); err != nil {
		return
	}
	log := s.opts.Log.WithFields(logrus.Fields{"pod": pod.ID, "tty": req.TTY})
	log.Info("debug console session starts")
	code, err := s.session(r.Context(), conn, rw.Reader, pod.ID, req)
	if err != nil {
		log = log.WithError(err)
	}
	log.WithField("exit_code", code).Info("debug console session ended")
}

func parseConsoleRequest(r *http.Request) (ConsoleRequest, error) {
	q := r.URL.Query()
	req := ConsoleRequest{Pod: q.Get("pod"), Term: q.Get("term"), TTY: q.Get("tty") == "1"}
	if req.Pod == "" {
		return req, errors.New("no pod named: pass ?pod=<id, id prefix or name>")
	}
	for _, p := range []struct {
		key string
		v   *uint16
	}{{"rows", &req.Size.Rows}, {"cols", &req.Size.Cols}} {
		s := q.Get(p.key)
		if s == "" {
			continue
		}
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return req, fmt.Errorf("%s=%q: want a number of characters", p.key, s)
		}
		*p.v = uint16(n)
	}
	return req, nil
}

func httpStatus(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrFailedPrecondition):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// session carries one console over conn: frames from the client feed the
// shell's stdin and size, its output goes back as frames, and the last
// frame is its exit code or what went wrong. The client hanging up ends the
// shell.
func (s *Server) session(parent context.Context, conn net.Conn, in *bufio.Reader, podID string, req ConsoleRequest) (int32, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	out := &frameConn{w: conn}
	stdin, stdinW := io.Pipe()
	defer stdin.Close()
	// Stdin has a queue and a goroutine of its own, so a shell slow to read
	// never holds up the resizes behind it.
	stdinData := make(chan []byte, 64)
	go func() {
		for b := range stdinData {
			if _, err := stdinW.Write(b); err != nil {
				return
			}
		}
		stdinW.Close()
	}()
	resize := make(chan Size, 8)
	go func() {
		defer cancel() // the client is gone, or broke the protocol
		eof := false
		defer func() {
			if !eof {
				close(stdinData)
			}
		}()
		for {
			f, err := ReadFrame(in)
			if err != nil {
				return
			}
			switch f.Type {
			case FrameStdin:
				if eof {
					continue
				}
				select {
				case stdinData <- f.Payload:
				case <-ctx.Done():
					return
				}
			case FrameStdinEOF:
				if !eof {
					eof = true
					close(stdinData)
				}
			case FrameResize:
				if sz, err := decodeSize(f.Payload); err == nil {
					select {
					case resize <- sz:
					default: // the shell is behind on resizes; the next one will do
					}
				}
			default:
				_ = out.send(FrameError, []byte(fmt.Sprintf("unknown frame type %q", f.Type)))
				return
			}
		}
	}()
	code, err := s.pods.DebugConsole(ctx, podID, req, stdin, out.stream(FrameStdout), out.stream(FrameStderr), resize)
	if err != nil {
		msg := err.Error()
		if parent.Err() != nil {
			msg = "cocoond is shutting down: the shell was ended"
		}
		_ = out.send(FrameError, []byte(msg))
		return code, err
	}
	return code, out.send(FrameExit, encodeExit(code))
}
