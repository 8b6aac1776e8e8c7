package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// logCount is what a CRI log file holds of a container's output streams.
type logCount struct {
	bytes    [2]uint64 // stream bytes of stdout, stderr in the records
	complete int64     // file bytes up to the end of the last whole record
	torn     bool      // the file ends in a record cut short
}

// countLog counts the stream bytes in the CRI log records read from r: the
// text of each record, plus one for the newline an F record stands for.
// A last line without its newline is a record a crash cut short (a write of a
// record longer than a page can stop between pages when cocoond is killed):
// it counts nothing, and complete tells where it begins. Lines that are no
// record of ours count nothing either.
func countLog(r io.Reader) (logCount, error) {
	var c logCount
	br := bufio.NewReaderSize(r, 64<<10)
	var lineLen int64 // bytes so far of a line longer than the buffer
	for {
		frag, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Records are at most maxLogLine of text: a longer line is
			// not ours, so only its length matters.
			lineLen += int64(len(frag))
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return c, err
		}
		if errors.Is(err, io.EOF) {
			// A last line without its newline is torn; complete stays at
			// its start.
			c.torn = len(frag) > 0 || lineLen > 0
			return c, nil
		}
		c.complete += lineLen + int64(len(frag))
		if lineLen > 0 {
			lineLen = 0
			continue
		}
		if idx, n, ok := parseRecord(frag[:len(frag)-1]); ok {
			c.bytes[idx] += n
		}
	}
}

// parseRecord reads "<timestamp> <stdout|stderr> <P|F> <text>" and says
// which stream it belongs to and how many stream bytes it holds.
func parseRecord(rec []byte) (int, uint64, bool) {
	sp := bytes.IndexByte(rec, ' ')
	if sp < 0 {
		return 0, 0, false
	}
	rest := rec[sp+1:]
	var idx int
	switch {
	case bytes.HasPrefix(rest, []byte("stdout ")):
		idx = 0
	case bytes.HasPrefix(rest, []byte("stderr ")):
		idx = 1
	default:
		return 0, 0, false
	}
	rest = rest[len("stdout "):]
	if len(rest) < 2 || rest[1] != ' ' || (rest[0] != 'F' && rest[0] != 'P') {
		return 0, 0, false
	}
	n := uint64(len(rest) - 2)
	if rest[0] == 'F' {
		n++
	}
	return idx, n, true
}

// countDeadline bounds how long recovery reads one container's log: a
// guest that flooded it between kubelet's rotations must not hold up the
// restart of every pod.
const countDeadline = 10 * time.Second

// recovered says what recoverOutput found besides the offsets.
type recovered struct {
	torn      bool  // a record the crash tore was cut off
	uncounted error // the file could not be counted: resumed from the base
}

// recoverOutput opens a container's log after a cocoond restart and derives
// from it, and the mark in the container's record, how much of each stream
// is persisted: the agent resends from there. A record torn by the crash is
// cut off; the agent sends its bytes again. One descriptor serves counting
// and writing, so a rotation by kubelet in between cannot split them. A log
// that cannot be counted (unreadable, too slow) costs duplicated lines, not
// the pod: the streams resume from the mark's base and the file's end
// starts a new mark, which the caller saves.
func recoverOutput(ctx context.Context, path string, mark LogMark) (*output, recovered, error) {
	o, err := newOutput("")
	if err != nil {
		return nil, recovered{}, err
	}
	o.path, o.mark = path, mark
	if path == "" {
		o.written = mark.Base
		return o, recovered{}, nil
	}
	f, size, err := openLog(path)
	if err != nil {
		return nil, recovered{}, err
	}
	o.file = f
	if size < mark.Start {
		// Someone shortened the file under us: its records start at 0.
		mark.Start = 0
		o.mark.Start = 0
	}
	ctx, cancel := context.WithTimeout(ctx, countDeadline)
	defer cancel()
	c, err := countLog(io.NewSectionReader(ctxReaderAt{ctx, f}, mark.Start, size-mark.Start))
	if err == nil && c.torn {
		if terr := f.Truncate(mark.Start + c.complete); terr != nil {
			err = fmt.Errorf("cutting the torn record off: %w", terr)
		}
	}
	if err != nil {
		o.written = mark.Base
		o.mark = LogMark{Start: size, Base: mark.Base}
		return o, recovered{uncounted: fmt.Errorf("counting %s: %w", path, err)}, nil
	}
	for i := range o.written {
		o.written[i] = mark.Base[i] + c.bytes[i]
	}
	return o, recovered{torn: c.torn}, nil
}

// ctxReaderAt stops reading once ctx ends: a huge log does not hold up
// recovery past its deadline.
type ctxReaderAt struct {
	ctx context.Context
	r   io.ReaderAt
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}

// logMarkSaver saves a container's log mark in its record.
func (m *Manager) logMarkSaver(id string) func(LogMark) error {
	return func(mark LogMark) error {
		_, err := m.containers.update(id, func(r *Container) error {
			r.Log = mark
			return nil
		})
		return err
	}
}
