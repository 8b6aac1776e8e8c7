package vm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
)

// Step is one named stage of bringing a VM up. Run returns the undo for what
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

// RunSteps runs steps in order, logging each with its duration. When one
// fails it unwinds everything done so far and returns the step's error.
// On success the caller owns the returned Cleanup (to undo on Stop).
func RunSteps(ctx context.Context, log *logrus.Entry, steps []Step) (*Cleanup, error) {
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
			entry.WithError(err).Warn("boot step failed, unwinding")
			return nil, errors.Join(fmt.Errorf("%s: %w", s.Name, err), c.Unwind(log))
		}
		entry.Debug("boot step done")
	}
	return c, nil
}
