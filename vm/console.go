package vm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// ConsoleLogMax caps console.log; when full it becomes console.log.1 (the
// one kept before) and a new console.log starts, so a guest printing without
// end holds at most twice this of the host's run dir.
const ConsoleLogMax = 1 << 20

// consoleDrain is how long Close reads what the VMM wrote before it exited
// (a panic's last lines) and the copier had not read yet.
const consoleDrain = 200 * time.Millisecond

// ConsolePipe is the FIFO the VMM writes the guest's serial console into;
// cocoond copies it into ConsoleLog with a cap. A FIFO rather than a file:
// when no cocoond reads it (cocoond is down) the VMM's writes fail and the
// output is dropped; when a restarted cocoond opens it again, the VMM's
// writes reach it again without the VMM knowing.
func ConsolePipe(runDir string) string { return filepath.Join(runDir, "console.pipe") }

// Console copies a VM's serial console from its FIFO into a capped,
// rotated console.log.
type Console struct {
	pipe *os.File
	out  *rotatingFile
	log  *logrus.Entry
	done chan struct{}
	once sync.Once
}

// OpenConsole starts copying the console FIFO of the VM in runDir into
// console.log. create makes the FIFO (before the VMM starts, which then
// opens it for writing); without it the FIFO must exist (a VM adopted after
// a restart). The FIFO is opened read-write so that opening never blocks and
// the read end never sees EOF between writers.
func OpenConsole(runDir string, create bool, log *logrus.Entry) (*Console, error) {
	path := ConsolePipe(runDir)
	if create {
		if err := unix.Mkfifo(path, 0o600); err != nil {
			return nil, fmt.Errorf("console fifo: %w", err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("console fifo: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return nil, fmt.Errorf("console fifo: %s is not a FIFO", path)
	}
	pipe, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("console fifo: %w", err)
	}
	out, err := openRotating(ConsoleLog(runDir), ConsoleLogMax)
	if err != nil {
		pipe.Close()
		return nil, err
	}
	c := &Console{pipe: pipe, out: out, log: log, done: make(chan struct{})}
	go c.copy()
	return c, nil
}

func (c *Console) copy() {
	defer close(c.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.pipe.Read(buf)
		if n > 0 {
			if werr := c.out.write(buf[:n]); werr != nil {
				c.log.WithError(werr).Warn("console log write failed: the guest console is dropped from now on")
				// Keep reading: an unread FIFO would stall the guest's console.
				c.out = nil
			}
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
				c.log.WithError(err).Warn("console read failed")
			}
			return
		}
	}
}

// Close reads what is left in the FIFO for a moment, then stops copying.
func (c *Console) Close() error {
	c.once.Do(func() {
		if err := c.pipe.SetReadDeadline(time.Now().Add(consoleDrain)); err != nil {
			c.pipe.Close()
		}
		<-c.done
		c.pipe.Close()
		if c.out != nil {
			c.out.close()
		}
	})
	return nil
}

// rotatingFile is a log file that, before it grows past max, is renamed to
// <path>.1 (replacing the one before) and started anew.
type rotatingFile struct {
	path string
	max  int64
	f    *os.File
	size int64
}

func openRotating(path string, max int64) (*rotatingFile, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rotatingFile{path: path, max: max, f: f, size: st.Size()}, nil
}

func (r *rotatingFile) write(p []byte) error {
	if int64(len(p)) > r.max {
		p = p[int64(len(p))-r.max:]
	}
	if r.size+int64(len(p)) > r.max {
		if err := r.rotate(); err != nil {
			return err
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return err
}

func (r *rotatingFile) rotate() error {
	r.f.Close()
	if err := os.Rename(r.path, r.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	r.f, r.size = f, 0
	return nil
}

func (r *rotatingFile) close() { r.f.Close() }
