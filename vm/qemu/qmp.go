// Package qemu is the QEMU driver: q35, no default devices, memory from a
// shared memfd (vhost-user-fs needs it), virtio devices only, controlled over
// QMP (qmp.go is our own client).
package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// maxQMPLine bounds one message from QEMU. The replies and events we use are
// a few KiB; QEMU runs the untrusted guest, so a compromised QEMU must not be
// able to grow cocoond's memory without limit. A longer line ends the
// connection.
const maxQMPLine = 4 << 20

// qmpClient speaks QMP: JSON objects, one per line. Replies carry the id we
// sent and go to the command that waits for them; events go to the
// subscriptions that match them (Subscribe), and are dropped when none does.
// The read loop never waits on anyone: a reply or an event is handed over
// into a one-slot channel that is empty by construction (one reply per
// command, one event per subscription).
type qmpClient struct {
	conn   *net.UnixConn
	writeM sync.Mutex
	nextID atomic.Uint64

	mu      sync.Mutex
	pending map[string]chan qmpReply
	subs    map[*qmpSubscription]struct{}
	closed  error

	done chan struct{} // closed when the read loop ends
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	ID     string          `json:"id"`
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// dialQMP connects, reads the greeting and leaves capability negotiation done.
func dialQMP(ctx context.Context, path string) (*qmpClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	q := &qmpClient{conn: c.(*net.UnixConn), pending: map[string]chan qmpReply{},
		subs: map[*qmpSubscription]struct{}{}, done: make(chan struct{})}
	// QEMU greets only one client at a time: a stale connection elsewhere
	// would make this read wait forever, so it obeys ctx.
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(deadline)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 64<<10), maxQMPLine)
	if !sc.Scan() {
		err := sc.Err()
		if err == nil {
			err = errors.New("connection closed")
		}
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	greeting := sc.Bytes()
	var g struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	if json.Unmarshal(greeting, &g) != nil || g.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("qmp: unexpected greeting %q", greeting)
	}
	go q.readLoop(sc)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpClient) readLoop(sc *bufio.Scanner) {
	for sc.Scan() {
		line := sc.Bytes()
		var msg struct {
			qmpReply
			qmpEvent
		}
		if json.Unmarshal(line, &msg) != nil {
			continue
		}
		if msg.Event != "" {
			q.deliver(msg.qmpEvent)
			continue
		}
		q.mu.Lock()
		ch := q.pending[msg.ID]
		delete(q.pending, msg.ID)
		q.mu.Unlock()
		if ch != nil {
			ch <- msg.qmpReply // one-slot buffer, one reply per id: never blocks
		}
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("EOF")
	}
	q.mu.Lock()
	q.closed = fmt.Errorf("qmp connection closed: %w", err)
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	q.mu.Unlock()
	close(q.done)
}

// deliver hands an event to every subscription it matches. Each subscription
// takes one event and is then removed, so its one-slot channel is never full.
// Events no subscription wants are dropped: nobody is waiting for them.
func (q *qmpClient) deliver(ev qmpEvent) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for s := range q.subs {
		if s.name == ev.Event && (s.match == nil || s.match(ev.Data)) {
			delete(q.subs, s)
			s.got <- ev
		}
	}
}

// Execute runs one command; result (if non-nil) receives the "return" value.
func (q *qmpClient) Execute(ctx context.Context, cmd string, args, result any) error {
	return q.execute(ctx, cmd, args, result, nil)
}

// ExecuteWithFile runs a command that takes a file descriptor (getfd, add-fd):
// the fd travels as SCM_RIGHTS with the command's bytes.
func (q *qmpClient) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File) error {
	return q.execute(ctx, cmd, args, nil, f)
}

func (q *qmpClient) execute(ctx context.Context, cmd string, args, result any, f *os.File) error {
	id := strconv.FormatUint(q.nextID.Add(1), 10)
	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	ch := make(chan qmpReply, 1)
	q.mu.Lock()
	if q.closed != nil {
		q.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, q.closed)
	}
	q.pending[id] = ch
	q.mu.Unlock()

	q.writeM.Lock()
	if f != nil {
		_, _, err = q.conn.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.conn.Write(append(b, '\n'))
	}
	q.writeM.Unlock()
	if err != nil {
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case rep, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", cmd, q.closedErr())
		}
		if rep.Error != nil {
			return fmt.Errorf("qmp %s: %w", cmd, rep.Error)
		}
		if result != nil && len(rep.Return) > 0 {
			return json.Unmarshal(rep.Return, result)
		}
		return nil
	case <-ctx.Done():
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (q *qmpClient) forget(id string) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

func (q *qmpClient) closedErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed == nil {
		return errors.New("qmp connection closed")
	}
	return q.closed
}

// qmpSubscription waits for one event. Subscribe before sending the command
// that causes the event: QEMU may send the event before that command's
// reply, and an event that arrives with no subscription is dropped.
type qmpSubscription struct {
	q     *qmpClient
	name  string
	match func(json.RawMessage) bool
	got   chan qmpEvent // one slot; filled once, under q.mu
}

// Subscribe registers for the next event called name for which match (if
// set) is true. match runs on the read loop with the client's lock held: it
// must be quick and must not call the client. Cancel the subscription when
// done with it (Wait does not).
func (q *qmpClient) Subscribe(name string, match func(json.RawMessage) bool) *qmpSubscription {
	s := &qmpSubscription{q: q, name: name, match: match, got: make(chan qmpEvent, 1)}
	q.mu.Lock()
	q.subs[s] = struct{}{}
	q.mu.Unlock()
	return s
}

// Wait returns the event once it has arrived (also if it arrived before
// Wait was called), or an error when ctx ends or the connection closes
// without it.
func (s *qmpSubscription) Wait(ctx context.Context) (json.RawMessage, error) {
	select {
	case ev := <-s.got:
		return ev.Data, nil
	case <-s.q.done:
		// The read loop delivers before it closes done: an event that
		// came in just before the end is here.
		select {
		case ev := <-s.got:
			return ev.Data, nil
		default:
		}
		return nil, fmt.Errorf("waiting for %s: %w", s.name, s.q.closedErr())
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for %s: %w", s.name, ctx.Err())
	}
}

// Cancel removes the subscription; an event it already took is discarded.
// Cancelling twice is fine.
func (s *qmpSubscription) Cancel() {
	s.q.mu.Lock()
	delete(s.q.subs, s)
	s.q.mu.Unlock()
}

// Close ends the connection; closing twice is fine.
func (q *qmpClient) Close() error {
	if err := q.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
