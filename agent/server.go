package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/ttrpc"
	"github.com/prometheus/procfs"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-runtime/cocoon/agent/netconf"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/version"
)

var empty = &emptypb.Empty{}

// Server implements the Agent and Health services.
type Server struct {
	engine *engine
	// powerOff ends the VM; PID 1 does it when signalled.
	powerOff func()
	policy   Policy
}

// NewServer returns a server whose DestroySandbox calls powerOff and that
// enforces policy.
func NewServer(powerOff func(), policy Policy) *Server {
	return &Server{engine: newEngine(), powerOff: powerOff, policy: policy}
}

// Serve runs the agent protocol on the guest channel until ctx ends.
func Serve(ctx context.Context) error {
	if lvl, err := logrus.ParseLevel(os.Getenv("COCOON_LOG_LEVEL")); err == nil {
		logrus.SetLevel(lvl)
	}
	if logrus.IsLevelEnabled(logrus.DebugLevel) {
		// Debug logs are for timing: stamp them to the microsecond.
		logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000000", DisableColors: true})
	}
	// A VM told to expect a token that cannot read one serves nothing: the
	// host would otherwise reach an agent open to every host user.
	policy, err := loadGuestPolicy()
	if err != nil {
		return err
	}
	l, err := Listen(30 * time.Second)
	if err != nil {
		return err
	}
	go warmContainerCgroups()
	logrus.WithFields(logrus.Fields{"version": version.Version, "addr": l.Addr().String(), "token": len(policy.Token) > 0, "debug_console": policy.DebugConsole}).Info("agent serving")
	return ServeOn(ctx, l, NewServer(func() { _ = unix.Kill(1, unix.SIGTERM) }, policy))
}

// ServeOn serves s on l (tests use a unix socket). Each connection is served
// with its own context, which records whether the connection has presented
// the token (see Policy.authorizeStream).
func ServeOn(ctx context.Context, l net.Listener, s *Server) error {
	ts, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(s.policy.unaryInterceptor))
	if err != nil {
		return err
	}
	agentapi.RegisterAgentService(ts, s)
	agentapi.RegisterHealthService(ts, s)
	go func() { <-ctx.Done(); ts.Close(); l.Close() }()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		cctx := context.WithValue(ctx, connAuthKey{}, new(atomic.Bool))
		go func() {
			_ = ts.Serve(cctx, newOneConnListener(conn))
			conn.Close() // served and ended, or refused because the server closed
		}()
	}
}

func (s *Server) Check(context.Context, *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	return &agentapi.CheckResponse{Status: agentapi.CheckResponse_SERVING}, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// guestDetails describes the guest as OnlineCPUMem answers it.
func guestDetails() *agentapi.GuestDetails {
	d := &agentapi.GuestDetails{KernelRelease: kernelRelease(), AgentVersion: version.Version, OnlineCpus: onlineCPUs()}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		d.MemoryBytes = uint64(si.Totalram) * uint64(si.Unit)
	}
	d.AgentRssBytes = selfRSS()
	return d
}

// selfRSS reads VmRSS of the agent server process.
func selfRSS() uint64 {
	p, err := procfs.Self()
	if err != nil {
		return 0
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0
	}
	return st.VmRSS
}

func (s *Server) CreateContainer(_ context.Context, req *agentapi.CreateContainerRequest) (*emptypb.Empty, error) {
	return empty, s.engine.create(req)
}

func (s *Server) StartContainer(_ context.Context, req *agentapi.ContainerRequest) (*emptypb.Empty, error) {
	return empty, s.engine.start(req.GetContainerId())
}

func (s *Server) RemoveContainer(_ context.Context, req *agentapi.RemoveContainerRequest) (*emptypb.Empty, error) {
	return empty, s.engine.remove(req.GetContainerId(), req.GetForce())
}

func (s *Server) UpdateContainer(_ context.Context, req *agentapi.UpdateContainerRequest) (*emptypb.Empty, error) {
	return empty, s.engine.update(req)
}

func (s *Server) StatsContainer(_ context.Context, req *agentapi.ContainerRequest) (*agentapi.ContainerStats, error) {
	return s.engine.stats(req.GetContainerId())
}

func (s *Server) ExecProcess(_ context.Context, req *agentapi.ExecProcessRequest) (*emptypb.Empty, error) {
	if req.GetGuestRoot() {
		if err := s.policy.allowGuestRoot(); err != nil {
			return nil, err
		}
		return empty, s.engine.execGuest(req)
	}
	return empty, s.engine.exec(req)
}

// lookup finds a process: a container's (nil container for a guest-root exec,
// whose container id is "").
func (s *Server) lookup(containerID, execID string) (*container, *process, error) {
	if containerID == "" {
		p, err := s.engine.guestProcess(execID)
		return nil, p, err
	}
	c, err := s.engine.get(containerID)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(execID)
	return c, p, err
}

func (s *Server) SignalProcess(_ context.Context, req *agentapi.SignalProcessRequest) (*emptypb.Empty, error) {
	c, p, err := s.lookup(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	sig := unix.Signal(req.GetSignal())
	switch {
	case p.exited():
		return empty, nil // signalling the dead is a no-op, as kill(2) on a reaped pid would be
	case req.GetAll() && c != nil && req.GetExecId() == "":
		c.killAll(sig)
		return empty, nil
	default:
		if c != nil && req.GetExecId() == "" {
			awaitHandler(p, sig, time.Second)
		}
		return empty, errorf(codes.Internal, p.run.Signal(sig))
	}
}

// awaitHandler gives a container's init up to wait to install a handler for
// sig. The kernel drops signals that PID 1 of a namespace does not catch, so a
// stop signal sent while the program is still starting (a shell about to exec
// it, or the program before its signal setup) would be lost and the stop would
// wait out its whole timeout. A process that never catches sig still gets it
// after wait, to the same effect as before.
func awaitHandler(p *process, sig unix.Signal, wait time.Duration) {
	if sig == unix.SIGKILL || sig == unix.SIGSTOP {
		return
	}
	pid, err := p.run.Pid()
	if err != nil {
		return
	}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline) && !p.exited(); time.Sleep(5 * time.Millisecond) {
		if catches(pid, sig) {
			return
		}
	}
}

// catches reads whether pid has a handler for sig (SigCgt in /proc/<pid>/status;
// procfs does not parse the signal masks).
func catches(pid int, sig unix.Signal) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return true // gone or unreadable: nothing to wait for
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || mask&(1<<(uint(sig)-1)) != 0
		}
	}
	return true
}

func (s *Server) WaitProcess(ctx context.Context, req *agentapi.ProcessRequest) (*agentapi.WaitProcessResponse, error) {
	c, p, err := s.lookup(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	switch {
	case c == nil:
		s.engine.guest.forget(req.GetExecId())
	case req.GetExecId() != "":
		c.execs.forget(req.GetExecId())
	}
	return &agentapi.WaitProcessResponse{ExitCode: p.exitCode, Reason: p.reason, ExitedAtNs: p.exitedAt.UnixNano()}, nil
}

// maxChunk is the most output one OutputChunk carries.
const maxChunk = 32 << 10

// ReadOutput streams one output of a process from the offset asked until EOF.
// Reads poll ctx so a stream whose host end went away stops consuming output
// a new reader needs.
func (s *Server) ReadOutput(ctx context.Context, req *agentapi.ReadOutputRequest, stream agentapi.Agent_ReadOutputServer) error {
	if err := s.policy.authorizeStream(ctx); err != nil {
		return err
	}
	_, p, err := s.lookup(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return err
	}
	which := int(req.GetStream())
	if which < 0 || which >= len(p.claimed) {
		return status.Errorf(codes.InvalidArgument, "no output stream %d", which)
	}
	f := p.stdout
	if req.GetStream() == agentapi.ReadOutputRequest_STDERR {
		f = p.stderr
	}
	if f == nil {
		return nil // a terminal has no separate stderr
	}
	if !p.claimed[which].CompareAndSwap(false, true) {
		return status.Errorf(codes.FailedPrecondition, "%s of %s/%s already has a reader", req.GetStream(), req.GetContainerId(), req.GetExecId())
	}
	defer p.claimed[which].Store(false)
	// What the last reader may not have persisted goes out first: a
	// cocoond crash loses nothing of the log that still is in the window.
	w := &p.sent[which]
	data, at, err := w.since(req.GetOffset())
	if err != nil {
		return status.Errorf(codes.OutOfRange, "%s of %s/%s: %v", req.GetStream(), req.GetContainerId(), req.GetExecId(), err)
	}
	if len(data) > 0 {
		logrus.WithFields(logrus.Fields{"container": req.GetContainerId(), "exec": req.GetExecId(), "stream": req.GetStream().String(),
			"bytes": len(data), "lost": at - req.GetOffset()}).Info("resending output its last reader did not persist")
	}
	for len(data) > 0 {
		n := min(len(data), maxChunk)
		if serr := stream.Send(&agentapi.OutputChunk{Data: data[:n], Offset: at}); serr != nil {
			return serr
		}
		data, at = data[n:], at+uint64(n)
	}
	buf := make([]byte, maxChunk)
	for {
		_ = f.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := f.Read(buf)
		if n > 0 {
			w.add(buf[:n])
			// The bytes are in the window before they are sent: if the send
			// fails, the next reader gets them.
			data := append([]byte(nil), buf[:n]...)
			if serr := stream.Send(&agentapi.OutputChunk{Data: data, Offset: w.end - uint64(n)}); serr != nil {
				return serr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
		case errors.Is(err, io.EOF), errors.Is(err, unix.EIO): // EIO: the terminal's last process left
			return nil
		default:
			return status.Errorf(codes.Internal, "read %s: %v", req.GetStream(), err)
		}
	}
}

func (s *Server) WriteStdin(_ context.Context, req *agentapi.WriteStdinRequest) (*agentapi.WriteStdinResponse, error) {
	_, p, err := s.lookup(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	n, err := p.writeStdin(req.GetData())
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "stdin: %v", err)
	}
	return &agentapi.WriteStdinResponse{Written: uint32(n)}, nil
}

func (s *Server) CloseStdin(_ context.Context, req *agentapi.ProcessRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	return empty, errorf(codes.Internal, p.closeStdin())
}

func (s *Server) ResizeTty(_ context.Context, req *agentapi.ResizeTtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if p.tty == nil {
		return nil, status.Error(codes.FailedPrecondition, "process has no terminal")
	}
	return empty, errorf(codes.Internal, p.tty.Resize(console.WinSize{Height: uint16(req.GetRows()), Width: uint16(req.GetColumns())}))
}

func (s *Server) UpdateInterface(_ context.Context, req *agentapi.Interface) (*agentapi.Interface, error) {
	iface, err := netconf.UpdateInterface(req)
	return iface, netError(err)
}

func (s *Server) UpdateRoutes(_ context.Context, req *agentapi.Routes) (*agentapi.Routes, error) {
	routes, err := netconf.UpdateRoutes(req)
	return routes, netError(err)
}

func netError(err error) error {
	switch {
	case errors.Is(err, netconf.ErrNoSuchInterface):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return errorf(codes.Internal, err)
}
