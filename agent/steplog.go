package agent

import (
	"time"

	"github.com/sirupsen/logrus"
)

// stepLog times the steps of one operation and logs them at debug level
// (cocoon.log=debug on the kernel command line): the guest's own account of
// where container start time goes. With debug off it costs a clock read a step.
type stepLog struct {
	op, container string
	start, last   time.Time
	fields        logrus.Fields
}

func newStepLog(op, container string) *stepLog {
	now := time.Now()
	return &stepLog{op: op, container: container, start: now, last: now}
}

// mark records the time since the previous mark under name.
func (l *stepLog) mark(name string) {
	now := time.Now()
	if logrus.IsLevelEnabled(logrus.DebugLevel) {
		if l.fields == nil {
			l.fields = logrus.Fields{}
		}
		l.fields[name] = now.Sub(l.last).String()
	}
	l.last = now
}

// done logs the steps and the total.
func (l *stepLog) done() {
	if !logrus.IsLevelEnabled(logrus.DebugLevel) {
		return
	}
	logrus.WithFields(l.fields).WithFields(logrus.Fields{"container": l.container, "took": time.Since(l.start).String()}).Debug(l.op)
}
