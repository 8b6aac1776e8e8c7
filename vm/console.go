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
type Console = CappedLog

// CappedLog copies what a VM process writes into a FIFO (its serial console,
// or a helper's stderr) into a capped, rotated log file: the guest can make
// these processes write without end, and they live on the host's tmpfs.
type CappedLog struct {
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
	return OpenCappedLog(ConsolePipe(runDir), ConsoleLog(runDir), ConsoleLogMax, create, log)
}

// OpenCappedLog starts copying the FIFO at path into logPath, rotated before
// it grows past max; create makes the FIFO. See OpenConsole.
func OpenCappedLog(path, logPath string, max int64, create bool, log *logrus.Entry) (*CappedLog, error) {
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
	out, err := openRotating(logPath, max)
	if err != nil {
		pipe.Close()
		return nil, err
	}
	c := &CappedLog{pipe: pipe, out: out, log: log, done: make(chan struct{})}
	go c.copy()
	return c, nil
}

func (c *CappedLog) copy() {
	defer close(c.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.pipe.Read(buf)
		if n > 0 {
			if werr := c.out.write(buf[:n]); werr != nil {
				c.log.WithError(werr).WithField("log", c.out.path).Warn("log write failed: what the process writes is dropped from now on")
				// Keep reading: an unread FIFO would stall the guest's console.
				c.out = nil
			}
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
				c.log.WithError(err).Warn("log fifo read failed")
			}
			return
		}
	}
}

// Close reads what is left in the FIFO for a moment, then stops copying.
func (c *CappedLog) Close() error {
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

// HelperLogMax caps a helper process's log (virtiofsd's): it reports errors
// in requests the guest makes, so the guest decides how much it writes.
const HelperLogMax = 256 << 10

// OpenHelperLog makes the FIFO <logPath>.pipe and copies it into logPath with
// HelperLogMax; it returns the copier and the FIFO's write end for the helper's
// stdout and stderr (the caller closes its copy once the helper started). A
// helper writing while no cocoond reads (a restart) gets EPIPE and carries on:
// virtiofsd and QEMU ignore SIGPIPE.
func OpenHelperLog(logPath string, log *logrus.Entry) (*CappedLog, *os.File, error) {
	c, err := OpenCappedLog(logPath+".pipe", logPath, HelperLogMax, true, log)
	if err != nil {
		return nil, nil, err
	}
	// The copier holds the read end, so this open does not block.
	w, err := os.OpenFile(logPath+".pipe", os.O_WRONLY, 0)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, w, nil
}

// AdoptHelperLog resumes copying a helper's log FIFO after a restart, until
// the helper is done.
func AdoptHelperLog(logPath string, done <-chan struct{}, log *logrus.Entry) {
	c, err := OpenCappedLog(logPath+".pipe", logPath, HelperLogMax, false, log)
	if err != nil {
		log.WithError(err).WithField("log", logPath).Warn("helper log not copied: its output is dropped")
		return
	}
	go func() {
		<-done
		c.Close()
	}()
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
