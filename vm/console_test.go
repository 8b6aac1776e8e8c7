package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.PanicLevel)
	return logrus.NewEntry(l)
}

// vmmWriter opens the console FIFO as a VMM does (a plain write-only open)
// and does not block on it, as QEMU and Cloud Hypervisor ignore SIGPIPE.
func vmmWriter(t *testing.T, dir string) *os.File {
	t.Helper()
	fd, err := unix.Open(ConsolePipe(dir), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "vmm")
	t.Cleanup(func() { f.Close() })
	return f
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	for _, name := range []string{"console.log", "console.log.1"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err == nil {
			total += st.Size()
		}
	}
	return total
}

// TestConsoleCapped: a guest printing 10 MiB leaves at most 2 × ConsoleLogMax
// on the host, and the console's end is what the boot-failure path reads.
func TestConsoleCapped(t *testing.T) {
	dir := t.TempDir()
	c, err := OpenConsole(dir, true, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	w := vmmWriter(t, dir)
	line := bytes.Repeat([]byte("x"), 1023)
	line = append(line, '\n')
	written := 0
	deadline := time.Now().Add(20 * time.Second)
	for written < 10<<20 && time.Now().Before(deadline) {
		n, err := w.Write(line)
		written += n
		if err != nil {
			time.Sleep(time.Millisecond) // pipe full: the copier catches up
		}
	}
	if _, err := w.Write([]byte("Kernel panic - not syncing: the end\n")); err != nil {
		time.Sleep(50 * time.Millisecond)
		if _, err := w.Write([]byte("Kernel panic - not syncing: the end\n")); err != nil {
			t.Fatal(err)
		}
	}
	w.Close() // the VMM exits
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if written < 10<<20 {
		t.Fatalf("the copier stalled: only %d bytes written", written)
	}
	if size := dirSize(t, dir); size > 2*ConsoleLogMax {
		t.Fatalf("console logs hold %d bytes after %d written, want at most %d", size, written, 2*ConsoleLogMax)
	}
	if tail := FileTail(ConsoleLog(dir), 100); !strings.HasSuffix(tail, "Kernel panic - not syncing: the end") {
		t.Fatalf("console tail %q lacks the last line", tail)
	}
}

// TestConsoleWithoutReader: while no cocoond reads the console (it is down),
// the VMM's writes fail and nothing grows; a restarted cocoond reopening the
// FIFO gets the output again through the VMM's very same descriptor.
func TestConsoleWithoutReader(t *testing.T) {
	dir := t.TempDir()
	c, err := OpenConsole(dir, true, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	w := vmmWriter(t, dir)
	c.Close() // cocoond goes away
	if _, err := w.Write([]byte("lost\n")); err == nil {
		t.Fatal("a write with no reader succeeded: it would queue or grow something")
	}
	if _, err := OpenConsole(dir, true, quietLog()); err == nil {
		t.Fatal("creating the FIFO over an existing one succeeded")
	}
	c2, err := OpenConsole(dir, false, quietLog()) // the adopt after a restart
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("after restart\n")); err != nil {
		t.Fatalf("the VMM cannot write to the reopened console: %v", err)
	}
	w.Close()
	c2.Close()
	if got := FileTail(ConsoleLog(dir), 100); got != "after restart" {
		t.Fatalf("console.log ends %q", got)
	}
	if _, err := OpenConsole(t.TempDir(), false, quietLog()); err == nil {
		t.Fatal("adopting a console with no FIFO succeeded")
	}
}

func TestRotatingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	r, err := openRotating(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"aaaa", "bbbb", "cccc", "0123456789ABCDEF"} {
		if err := r.write([]byte(w)); err != nil {
			t.Fatal(err)
		}
	}
	r.close()
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	if string(cur) != "6789ABCDEF" || string(old) != "cccc" {
		t.Fatalf("log %q, log.1 %q", cur, old)
	}
}

// TestHelperLogIsCapped: a helper that writes without end (virtiofsd
// reporting a guest's bad requests) costs the host at most twice
// HelperLogMax, and its last words are kept.
func TestHelperLogIsCapped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "helper.log")
	capped, w, err := OpenHelperLog(logPath, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 40000 ]; do echo 'helper: bad request from the guest'; i=$((i+1)); done; echo last-words >&2")
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	capped.Close()
	var total int64
	for _, p := range []string{logPath, logPath + ".1"} {
		if st, err := os.Stat(p); err == nil {
			total += st.Size()
		}
	}
	if total > 2*HelperLogMax {
		t.Fatalf("helper logs hold %d bytes, more than %d", total, 2*HelperLogMax)
	}
	last, _ := os.ReadFile(logPath)
	if !strings.HasSuffix(string(last), "last-words\n") {
		t.Fatalf("the log lost the helper's last line: ...%q", last[max(0, len(last)-80):])
	}
}
