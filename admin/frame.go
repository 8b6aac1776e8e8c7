// Package admin is cocoond's admin socket: a small HTTP server on a
// root-only unix socket for operator tools, the framing a debug console
// session speaks once its connection is upgraded, and the client side that
// `cocoon debug-console` uses. It imports nothing of the daemon, so the CLI
// stays small.
package admin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame types of a console session. A frame is one type byte, the payload
// length as a big-endian uint32, and the payload.
const (
	FrameStdin    byte = 'i' // client → server: bytes for the shell's stdin
	FrameStdinEOF byte = 'c' // client → server: stdin ended
	FrameResize   byte = 'r' // client → server: rows and columns, big-endian uint16 each
	FrameStdout   byte = 'o' // server → client
	FrameStderr   byte = 'e' // server → client
	FrameExit     byte = 'x' // server → client, last: the exit code, big-endian int32
	FrameError    byte = 'E' // server → client, last: why the session failed (text)
)

// MaxFramePayload bounds a frame, so a broken peer cannot make the other
// side allocate without limit. Writers split larger data.
const MaxFramePayload = 64 << 10

const frameHeaderLen = 5

// Frame is one decoded frame.
type Frame struct {
	Type    byte
	Payload []byte
}

// ErrFrameTooLarge is a frame whose length exceeds MaxFramePayload.
var ErrFrameTooLarge = errors.New("admin: frame larger than the limit")

// WriteFrame writes one frame in a single Write. Payloads over
// MaxFramePayload are refused: use a frameConn stream for bulk data.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFramePayload {
		return ErrFrameTooLarge
	}
	buf := make([]byte, frameHeaderLen+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:frameHeaderLen], uint32(len(payload)))
	copy(buf[frameHeaderLen:], payload)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame. A stream that ends between frames is io.EOF;
// one that ends inside a frame is io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFramePayload {
		return Frame{}, fmt.Errorf("%w: %d bytes in a %q frame", ErrFrameTooLarge, n, hdr[0])
	}
	f := Frame{Type: hdr[0], Payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return f, nil
}

// Size is a terminal's size in characters.
type Size struct{ Rows, Cols uint16 }

func encodeSize(s Size) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b, s.Rows)
	binary.BigEndian.PutUint16(b[2:], s.Cols)
	return b
}

func decodeSize(b []byte) (Size, error) {
	if len(b) != 4 {
		return Size{}, fmt.Errorf("admin: resize frame of %d bytes, want 4", len(b))
	}
	return Size{Rows: binary.BigEndian.Uint16(b), Cols: binary.BigEndian.Uint16(b[2:])}, nil
}

func encodeExit(code int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(code)) }

func decodeExit(b []byte) (int32, error) {
	if len(b) != 4 {
		return 0, fmt.Errorf("admin: exit frame of %d bytes, want 4", len(b))
	}
	return int32(binary.BigEndian.Uint32(b)), nil
}

// frameConn lets several goroutines send frames on one connection.
type frameConn struct {
	mu sync.Mutex
	w  io.Writer
}

func (c *frameConn) send(typ byte, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return WriteFrame(c.w, typ, payload)
}

// stream is an io.WriteCloser whose writes become typ frames, split at
// MaxFramePayload. Close does nothing: the exit frame ends a session.
func (c *frameConn) stream(typ byte) io.WriteCloser { return frameStream{c, typ} }

type frameStream struct {
	c   *frameConn
	typ byte
}

func (s frameStream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), MaxFramePayload)
		if err := s.c.send(s.typ, p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

func (frameStream) Close() error { return nil }
