package sandbox

import (
	"sync"
	"time"
)

// Event kinds, as CRI's ContainerEventType names them.
const (
	EventCreated = "CREATED"
	EventStarted = "STARTED"
	EventStopped = "STOPPED"
	EventDeleted = "DELETED"
)

// Event is a change of a container (or of a pod, then ContainerID == PodID).
type Event struct {
	Kind        string
	ContainerID string
	PodID       string
	At          time.Time
}

// events fans out lifecycle events to subscribers (GetContainerEvents).
type events struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

func (e *events) publish(kind, containerID, podID string) {
	ev := Event{Kind: kind, ContainerID: containerID, PodID: podID, At: time.Now()}
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs {
		select {
		case ch <- ev:
		default: // a subscriber that does not keep up misses events, as with containerd
		}
	}
}

// Subscribe returns a channel of events from now on and a function ending it.
func (m *Manager) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 256)
	m.events.mu.Lock()
	if m.events.subs == nil {
		m.events.subs = map[chan Event]struct{}{}
	}
	m.events.subs[ch] = struct{}{}
	m.events.mu.Unlock()
	return ch, func() {
		m.events.mu.Lock()
		delete(m.events.subs, ch)
		m.events.mu.Unlock()
	}
}
