// Package pipeline runs named steps (bringing a VM up, creating a pod or a
// container) and unwinds what the done steps acquired when one fails. It also
// holds the crash hook the crash-consistency tests arm: cocoond SIGKILLs
// itself after the named step ("<pipeline>/<step>").
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// crashAt is the named point at which the process SIGKILLs itself (a test
// hook: crash-consistency tests kill cocoond exactly there). Empty means never.
var crashAt atomic.Pointer[string]

// SetCrashPoint arms the crash hook at point ("<pipeline>/<step>", e.g.
// "run-pod/network"); cocoond sets it once at start from
// COCOON_TEST_CRASH_AT. An empty point disarms it.
func SetCrashPoint(point string) { crashAt.Store(&point) }

// killSelf is what an armed crash point does; tests replace it.
var killSelf = func() { _ = syscall.Kill(syscall.Getpid(), syscall.SIGKILL) }

// SetCrashAction replaces what an armed crash point does (SIGKILL of the
// process) and returns a restore func: tests of other packages look at the
// state a crash there would leave without dying.
func SetCrashAction(fn func()) (restore func()) {
	old := killSelf
	killSelf = fn
	return func() { killSelf = old }
}

// CrashPoint SIGKILLs the process when point is the armed crash point. The
// step runner calls it after every step ("<pipeline>/<step>"); code that runs
// no steps (pod stop and removal) calls it at its own named points.
func CrashPoint(point string) {
	if p := crashAt.Load(); p != nil && *p != "" && *p == point {
		killSelf()
	}
}

type nameKey struct{}

// WithName names the pipeline Run runs with ctx (the crash hook's
// "<pipeline>/" prefix, and the logs' pipeline field); nested pipelines name
// themselves.
func WithName(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, nameKey{}, name)
}

// Name is the pipeline ctx was named for by WithName ("" when none).
func Name(ctx context.Context) string {
	name, _ := ctx.Value(nameKey{}).(string)
	return name
}

// Step is one named stage of a pipeline (bringing a VM up, creating a
// container). Run returns the undo for what
// it acquired (nil when there is nothing to undo).
type Step struct {
	Name string
	Run  func(ctx context.Context) (undo func() error, err error)
}

// Cleanup is a stack of undos, unwound in reverse order.
type Cleanup struct {
	undos []namedUndo
}

type namedUndo struct {
	name string
	fn   func() error
}

// Push adds an undo; nil is ignored.
func (c *Cleanup) Push(name string, fn func() error) {
	if fn != nil {
		c.undos = append(c.undos, namedUndo{name, fn})
	}
}

// Unwind runs every undo, last first, and returns their errors joined. It
// does not stop at an error: a failed undo must not leak what follows it.
func (c *Cleanup) Unwind(log *logrus.Entry) error {
	var errs []error
	for i := len(c.undos) - 1; i >= 0; i-- {
		u := c.undos[i]
		if err := u.fn(); err != nil {
			log.WithError(err).WithField("step", u.name).Warn("undo failed")
			errs = append(errs, fmt.Errorf("undo %s: %w", u.name, err))
		}
	}
	c.undos = nil
	return errors.Join(errs...)
}

// Len is the number of pending undos.
func (c *Cleanup) Len() int { return len(c.undos) }

// Run runs steps in order, logging each with its duration. When one
// fails it unwinds everything done so far and returns the step's error.
// On success the caller owns the returned Cleanup (to undo on Stop).
func Run(ctx context.Context, log *logrus.Entry, steps []Step) (*Cleanup, error) {
	name := Name(ctx)
	log = log.WithField("pipeline", name)
	c := &Cleanup{}
	for _, s := range steps {
		start := time.Now()
		if err := ctx.Err(); err != nil {
			return nil, errors.Join(fmt.Errorf("before %s: %w", s.Name, err), c.Unwind(log))
		}
		undo, err := s.Run(ctx)
		c.Push(s.Name, undo)
		entry := log.WithFields(logrus.Fields{"step": s.Name, "took": time.Since(start).String()})
		if err != nil {
			entry.WithError(err).Warn("step failed, unwinding")
			return nil, errors.Join(fmt.Errorf("%s: %w", s.Name, err), c.Unwind(log))
		}
		entry.Debug("step done")
		// After the step: what it made exists, what follows has not run.
		CrashPoint(name + "/" + s.Name)
	}
	return c, nil
}
