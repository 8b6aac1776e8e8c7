package sandbox

import "sync"

// cappedBuffer keeps the first limit bytes written to it and counts, then
// drops, the rest. Writes never fail, so its reader keeps draining the
// source (a full pipe in the guest would otherwise block the process).
type cappedBuffer struct {
	mu      sync.Mutex
	limit   int
	buf     []byte
	dropped int64
	taken   bool
	onDrop  func() // called once, at the first byte dropped
}

func newCappedBuffer(limit int, onDrop func()) *cappedBuffer {
	return &cappedBuffer{limit: limit, onDrop: onDrop}
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := min(len(p), b.limit-len(b.buf))
	if b.taken {
		keep = 0
	}
	if keep > 0 {
		if need := len(b.buf) + keep; need > cap(b.buf) {
			// Grow by doubling, but never past the limit.
			grown := make([]byte, len(b.buf), min(max(2*cap(b.buf), need), b.limit))
			copy(grown, b.buf)
			b.buf = grown
		}
		b.buf = append(b.buf, p[:keep]...)
	}
	if keep < len(p) {
		if b.dropped == 0 && !b.taken && b.onDrop != nil {
			b.onDrop()
		}
		b.dropped += int64(len(p) - keep)
	}
	return len(p), nil
}

// take returns what was kept; later writes are dropped, so a reader still
// running after its caller returned cannot touch the returned slice.
func (b *cappedBuffer) take() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.taken = true
	return b.buf
}
