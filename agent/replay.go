package agent

import (
	"errors"
	"fmt"
)

// replayWindowSize bounds what one output stream keeps of the bytes it sent:
// a reader that died with output it had not persisted (cocoond killed) gets
// it again from here. Bytes older than the window are reported lost. What a
// killed cocoond had not persisted is what sat in the connection's buffers:
// a flooding host pod left up to 193 KB (a unix socket's default send
// buffer is 208 KiB), a VM under TCG up to 35 KB. Over twice the worst seen,
// and only a stream that printed that much holds it.
const replayWindowSize = 512 << 10

// replayMinGrowth is the first allocation of a window: an idle stream holds
// nothing, a quiet one a few KiB.
const replayMinGrowth = 4 << 10

// errBeyondSent is a resume offset past every byte the stream has sent.
var errBeyondSent = errors.New("resume offset beyond the bytes sent")

// replayWindow is a ring of the most recent bytes one output stream sent,
// with their absolute offsets. It grows lazily up to limit. Only the
// stream's claimer touches it, so it needs no lock.
type replayWindow struct {
	ring  []byte // the byte at absolute offset o is ring[o%len(ring)]
	held  int    // bytes held, the last held bytes before end
	end   uint64 // absolute offset just after the last byte sent
	limit int    // 0: replayWindowSize
}

func (w *replayWindow) max() int {
	if w.limit > 0 {
		return w.limit
	}
	return replayWindowSize
}

// add records p as sent.
func (w *replayWindow) add(p []byte) {
	total := uint64(len(p))
	if len(p) > w.max() {
		p = p[len(p)-w.max():]
	}
	// Grow while end still matches the held bytes.
	if need := w.held + len(p); need > len(w.ring) && len(w.ring) < w.max() {
		w.grow(min(w.max(), max(2*len(w.ring), need, replayMinGrowth)))
	}
	w.end += total
	w.put(w.end-uint64(len(p)), p)
	w.held = min(w.held+len(p), len(w.ring))
}

// grow moves the held bytes into a ring of size bytes.
func (w *replayWindow) grow(size int) {
	held := w.tail(w.end - uint64(w.held))
	w.ring = make([]byte, size)
	w.put(w.end-uint64(len(held)), held)
}

// put writes p, at most len(w.ring) bytes, at absolute offset at.
func (w *replayWindow) put(at uint64, p []byte) {
	if len(p) == 0 {
		return
	}
	i := int(at % uint64(len(w.ring)))
	n := copy(w.ring[i:], p)
	copy(w.ring, p[n:])
}

// since returns a copy of the held bytes from offset x on and the offset of
// its first byte: x itself, or the window's start when x is older than the
// window (the bytes between are gone).
func (w *replayWindow) since(x uint64) ([]byte, uint64, error) {
	if x > w.end {
		return nil, 0, fmt.Errorf("%w: %d asked, %d sent", errBeyondSent, x, w.end)
	}
	start := w.end - uint64(w.held)
	from := max(x, start)
	return w.tail(from), from, nil
}

// tail copies the held bytes from offset from (within the window) to end.
func (w *replayWindow) tail(from uint64) []byte {
	n := int(w.end - from)
	out := make([]byte, n)
	if n == 0 {
		return out
	}
	i := int(from % uint64(len(w.ring)))
	k := copy(out, w.ring[i:])
	copy(out[k:], w.ring)
	return out
}
