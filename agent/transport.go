package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

const (
	// VsockPort is where the agent listens on vsock and hybrid vsock.
	VsockPort = 1024
	// SerialPortName is the virtio-serial port the host names for the agent.
	SerialPortName = "cocoon.agent"
)

// Listen picks the agent channel: vsock when the VM has a vsock device, else
// the virtio-serial port. The port can appear a moment after module load.
func Listen(wait time.Duration) (net.Listener, error) {
	// /dev/vsock exists as soon as the vsock module is loaded; only a guest
	// CID (not VMADDR_CID_ANY) says a vsock device actually connects to a host.
	if cid, err := vsock.ContextID(); err == nil && cid != unix.VMADDR_CID_ANY && cid > unix.VMADDR_CID_HOST {
		if l, err := vsock.Listen(VsockPort, nil); err == nil {
			return l, nil
		}
	}
	deadline := time.Now().Add(wait)
	for {
		dev, err := findSerialPort(SerialPortName)
		if err == nil {
			return newSerialListener(dev), nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no vsock and no virtio-serial port %q: %w", SerialPortName, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findSerialPort maps a virtio-serial port name to its /dev node (no udev here).
func findSerialPort(name string) (string, error) {
	ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range ports {
		data, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(data)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p)), nil
		}
	}
	return "", errors.New("port not found")
}

// serialListener turns a virtio-serial port into a listener of successive
// connections: the port carries one session at a time, and a host that
// disconnects (cocoond restarting) gets a fresh session when it reconnects.
type serialListener struct {
	dev    string
	free   chan struct{} // holds a token while no session is open
	closed chan struct{}
	once   sync.Once
}

func newSerialListener(dev string) *serialListener {
	l := &serialListener{dev: dev, free: make(chan struct{}, 1), closed: make(chan struct{})}
	l.free <- struct{}{}
	return l
}

func (l *serialListener) Accept() (net.Conn, error) {
	select {
	case <-l.free:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	for {
		f, err := os.OpenFile(l.dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			l.free <- struct{}{}
			return nil, err
		}
		// The port reports POLLHUP while no host end is connected; reading then
		// would return EOF at once and end the session before it began.
		if waitHostConnected(f, l.closed) {
			return &serialConn{File: f, release: func() { l.free <- struct{}{} }}, nil
		}
		f.Close()
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		default:
		}
	}
}

func waitHostConnected(f *os.File, closed <-chan struct{}) bool {
	raw, err := f.SyscallConn()
	if err != nil {
		return false
	}
	for {
		var revents int16
		_ = raw.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(fds, 100); err == nil && n >= 0 {
				revents = fds[0].Revents
			}
		})
		if revents&unix.POLLHUP == 0 {
			return true
		}
		select {
		case <-closed:
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *serialListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *serialListener) Addr() net.Addr { return serialAddr(l.dev) }

type serialAddr string

func (a serialAddr) Network() string { return "virtio-serial" }
func (a serialAddr) String() string  { return string(a) }

// serialConn is one session on the port.
type serialConn struct {
	*os.File
	release func()
	once    sync.Once
}

func (c *serialConn) Close() error {
	err := c.File.Close()
	c.once.Do(c.release)
	return err
}

func (c *serialConn) LocalAddr() net.Addr  { return serialAddr(c.Name()) }
func (c *serialConn) RemoteAddr() net.Addr { return serialAddr("host") }

// oneConnListener hands out one connection, then blocks until the connection
// or the listener closes: ServeOn serves each connection with its own context.
type oneConnListener struct {
	conns  chan net.Conn
	done   chan struct{} // closed when the connection or the listener closes
	once   sync.Once
	addr   net.Addr
	closed func()
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{conns: make(chan net.Conn, 1), done: make(chan struct{}), addr: c.LocalAddr()}
	l.closed = func() { l.once.Do(func() { close(l.done) }) }
	l.conns <- &notifyConn{Conn: c, closed: l.closed}
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error   { l.closed(); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.addr }

// notifyConn tells its listener when it closes.
type notifyConn struct {
	net.Conn
	closed func()
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.closed()
	return err
}
