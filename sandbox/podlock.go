package sandbox

import (
	"context"
	"fmt"
	"sync"
)

// podLocks serialises the operations on one pod: RunPodSandbox's undo,
// StopPodSandbox, RemovePodSandbox and every container change in the pod take
// its lock, so a stop racing a start, or a remove racing a create, ends in one
// of the orders, never in a mix. Reads (status, lists, stats, exec) take no
// lock: they see the last record written. Waiting for the lock honours the
// caller's context, so a pod stuck in a long stop costs the caller its own
// deadline, never more, and other pods are never involved.
type podLocks struct {
	mu    sync.Mutex
	locks map[string]*podLock
}

type podLock struct {
	held chan struct{} // a token: full while someone holds the lock
	refs int           // holders and waiters, so the entry goes when unused
}

// lock takes the pod's lock or returns the context's error.
func (l *podLocks) lock(ctx context.Context, podID string) (unlock func(), err error) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*podLock{}
	}
	pl := l.locks[podID]
	if pl == nil {
		pl = &podLock{held: make(chan struct{}, 1)}
		l.locks[podID] = pl
	}
	pl.refs++
	l.mu.Unlock()

	release := func() {
		l.mu.Lock()
		if pl.refs--; pl.refs == 0 {
			delete(l.locks, podID)
		}
		l.mu.Unlock()
	}
	select {
	case pl.held <- struct{}{}:
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("waiting for another operation on pod %s: %w", podID, ctx.Err())
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-pl.held
			release()
		})
	}, nil
}

// size is how many pods have holders or waiters (tests check nothing leaks).
func (l *podLocks) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.locks)
}
