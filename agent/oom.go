package agent

import (
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// oomBroker fans OOM kills out to every OOMEvents stream.
type oomBroker struct {
	mu   sync.Mutex
	subs map[chan *agentapi.OOMEvent]struct{}
}

func newOOMBroker() *oomBroker {
	return &oomBroker{subs: map[chan *agentapi.OOMEvent]struct{}{}}
}

// watch forwards the container's OOM notifications until its cgroup goes away.
func (b *oomBroker) watch(c *container) {
	ch, err := c.lc.NotifyOOM()
	if err != nil {
		logrus.WithError(err).WithField("container", c.id).Warn("no OOM notifications")
		return
	}
	go func() {
		for range ch {
			b.publish(&agentapi.OOMEvent{ContainerId: c.id, AtNs: time.Now().UnixNano()})
		}
	}()
}

func (b *oomBroker) publish(ev *agentapi.OOMEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default: // a stalled subscriber must not block the guest
		}
	}
}

func (b *oomBroker) subscribe() (<-chan *agentapi.OOMEvent, func()) {
	ch := make(chan *agentapi.OOMEvent, 64)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		delete(b.subs, ch)
		b.mu.Unlock()
	}
}
