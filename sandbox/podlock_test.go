package sandbox

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPodLocksSerialiseOnePodOnly(t *testing.T) {
	t.Parallel()
	var l podLocks
	ctx := context.Background()
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := l.lock(ctx, "a")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			unlock()
			unlock() // a second unlock is a no-op
		}()
	}
	// Another pod is never held up by pod a.
	unlockB, err := l.lock(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	unlockB()
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d holders of one pod's lock at once", most.Load())
	}
	if l.size() != 0 {
		t.Fatalf("%d lock entries left", l.size())
	}
}

func TestPodLockWaitHonoursContext(t *testing.T) {
	t.Parallel()
	var l podLocks
	unlock, err := l.lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.lock(ctx, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lock of a held pod = %v, want DeadlineExceeded", err)
	}
	unlock()
	if l.size() != 0 {
		t.Fatalf("%d lock entries left", l.size())
	}
}
