package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// process is a container's init or exec process, or a process in the guest
// root (guestexec.go), with its stdio.
type process struct {
	lp  *libcontainer.Process // container processes only
	run runner                // waits for and signals the process

	tty     terminal       // set for terminal processes: it is stdin and stdout
	stdin   io.WriteCloser // pipe writer; nil without stdin
	stdout  *os.File
	stderr  *os.File
	claimed [2]atomic.Bool // one reader per output stream
	// sent keeps the latest output each stream sent, so a reader that
	// died before persisting it (cocoond killed) resumes from its offset.
	// Only the stream's claimer touches it.
	sent [2]replayWindow

	childEnds   []*os.File // closed in the agent once the child has them
	consoleSock *os.File   // parent end: the pty master arrives here
	stdinMu     sync.Mutex
	stdinClosed bool
	done        chan struct{}
	exitCode    int32
	reason      string
	exitedAt    time.Time
	oomCheck    func() bool // reports whether the cgroup OOM-killed something
}

// runner waits for and signals a process: libcontainer's Process is one,
// guestCommand (os/exec) the other.
type runner interface {
	Wait() (*os.ProcessState, error)
	Signal(os.Signal) error
	Pid() (int, error)
}

// terminal is the agent's end of a process's terminal.
type terminal interface {
	io.Writer
	Resize(console.WinSize) error
}

// newProcess prepares lp's stdio: a terminal when tty, else pipes.
func newProcess(lp *libcontainer.Process, tty, withStdin bool) (*process, error) {
	p := &process{lp: lp, run: lp, done: make(chan struct{})}
	if tty {
		parent, child, err := socketPair()
		if err != nil {
			return nil, err
		}
		lp.ConsoleSocket = child
		p.consoleSock = parent
		p.childEnds = append(p.childEnds, child)
		return p, nil
	}
	if err := p.pipeStdio(withStdin, &lp.Stdin, &lp.Stdout, &lp.Stderr); err != nil {
		return nil, err
	}
	return p, nil
}

// pipeStdio gives a process without a terminal pipes for its stdio: the
// child's ends go to *stdin (only when withStdin), *stdout and *stderr; the
// agent keeps the others.
func (p *process) pipeStdio(withStdin bool, stdin *io.Reader, stdout, stderr *io.Writer) error {
	if withStdin {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		*stdin, p.stdin = r, w
		p.childEnds = append(p.childEnds, r)
	}
	for _, out := range []struct {
		agent **os.File
		child *io.Writer
	}{{&p.stdout, stdout}, {&p.stderr, stderr}} {
		r, w, err := os.Pipe()
		if err != nil {
			p.closeAll()
			return err
		}
		*out.agent, *out.child = r, w
		p.childEnds = append(p.childEnds, w)
	}
	return nil
}

// started closes the child's ends in the agent and, for a terminal, receives the
// pty master from the container's init.
func (p *process) started() error {
	for _, f := range p.childEnds {
		f.Close()
	}
	p.childEnds = nil
	if p.consoleSock == nil {
		return nil
	}
	defer p.consoleSock.Close()
	master, err := recvFd(p.consoleSock)
	if err != nil {
		return fmt.Errorf("receiving the terminal: %w", err)
	}
	c, err := console.ConsoleFromFile(master)
	if err != nil {
		return err
	}
	p.tty, p.stdin, p.stdout = c, c, master
	return nil
}

// watch waits for the process to exit and records how it ended.
func (p *process) watch() {
	st, err := p.run.Wait()
	code := int32(-1)
	if st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Exited():
				code = int32(ws.ExitStatus())
			case ws.Signaled():
				code = 128 + int32(ws.Signal())
			}
		}
	} else if err != nil {
		code = 255
	}
	if code == 128+int32(unix.SIGKILL) && p.oomCheck != nil && p.oomCheck() {
		p.reason = "OOMKilled"
	}
	p.exitCode, p.exitedAt = code, time.Now()
	close(p.done)
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) writeStdin(data []byte) (int, error) {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil || p.stdinClosed {
		return 0, errors.New("stdin is not open")
	}
	return p.stdin.Write(data)
}

// closeStdin sends EOF: closes the pipe, or types ^D on a terminal.
func (p *process) closeStdin() error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil || p.stdinClosed {
		return nil
	}
	p.stdinClosed = true
	if p.tty != nil {
		_, err := p.tty.Write([]byte{4})
		return err
	}
	return p.stdin.Close()
}

// closeAll releases every descriptor the agent holds for this process.
func (p *process) closeAll() {
	for _, f := range append(p.childEnds, p.consoleSock, p.stdout, p.stderr) {
		if f != nil {
			f.Close()
		}
	}
	if p.stdin != nil && p.tty == nil {
		p.stdin.Close()
	}
}

// libcontainerProcess maps an OCI process onto libcontainer's.
func libcontainerProcess(sp *specs.Process, init bool) *libcontainer.Process {
	lp := &libcontainer.Process{
		Args:            sp.Args,
		Env:             sp.Env,
		Cwd:             sp.Cwd,
		UID:             int(sp.User.UID),
		GID:             int(sp.User.GID),
		Init:            init,
		NoNewPrivileges: &sp.NoNewPrivileges,
		AppArmorProfile: sp.ApparmorProfile,
		Label:           sp.SelinuxLabel,
	}
	for _, g := range sp.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	if sp.ConsoleSize != nil {
		lp.ConsoleWidth, lp.ConsoleHeight = uint16(sp.ConsoleSize.Width), uint16(sp.ConsoleSize.Height)
	}
	if !init && sp.Capabilities != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding:    sp.Capabilities.Bounding,
			Effective:   sp.Capabilities.Effective,
			Inheritable: sp.Capabilities.Inheritable,
			Permitted:   sp.Capabilities.Permitted,
			Ambient:     sp.Capabilities.Ambient,
		}
	}
	return lp
}

func socketPair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[1]), "console-parent"), os.NewFile(uintptr(fds[0]), "console-child"), nil
}

// recvFd reads one file descriptor passed with SCM_RIGHTS.
func recvFd(sock *os.File) (*os.File, error) {
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, 0)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("expected one control message, got %d (%v)", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("expected one fd (%v)", err)
	}
	return os.NewFile(uintptr(fds[0]), string(buf[:n])), nil
}
