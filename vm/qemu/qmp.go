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

// qmpClient speaks QMP: JSON objects, one per line. Replies carry the id we
// sent; events arrive in between and are delivered to the events channel.
type qmpClient struct {
	conn   *net.UnixConn
	writeM sync.Mutex
	nextID atomic.Uint64

	mu      sync.Mutex
	pending map[string]chan qmpReply
	closed  error

	events chan qmpEvent
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
	q := &qmpClient{conn: c.(*net.UnixConn), pending: map[string]chan qmpReply{}, events: make(chan qmpEvent, 64)}
	// QEMU greets only one client at a time: a stale connection elsewhere
	// would make this read wait forever, so it obeys ctx.
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(deadline)
	}
	r := bufio.NewReader(c)
	greeting, err := r.ReadBytes('\n')
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	var g struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	if json.Unmarshal(greeting, &g) != nil || g.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("qmp: unexpected greeting %q", greeting)
	}
	go q.readLoop(r)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpClient) readLoop(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var probe struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(line, &probe) == nil && probe.Event != "" {
			var ev qmpEvent
			_ = json.Unmarshal(line, &ev)
			select {
			case q.events <- ev:
			default: // nobody listening closely: events are advisory
			}
			continue
		}
		var rep qmpReply
		if json.Unmarshal(line, &rep) != nil {
			continue
		}
		q.mu.Lock()
		ch := q.pending[rep.ID]
		delete(q.pending, rep.ID)
		q.mu.Unlock()
		if ch != nil {
			ch <- rep
		}
	}
	q.mu.Lock()
	q.closed = fmt.Errorf("qmp connection closed: %w", err)
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	q.mu.Unlock()
	close(q.events)
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
		return q.closed
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

// WaitEvent waits for an event by name for which match (if set) is true.
func (q *qmpClient) WaitEvent(ctx context.Context, name string, match func(json.RawMessage) bool) error {
	for {
		select {
		case ev, ok := <-q.events:
			if !ok {
				return q.closedErr()
			}
			if ev.Event == name && (match == nil || match(ev.Data)) {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", name, ctx.Err())
		}
	}
}

// Close ends the connection; closing twice is fine.
func (q *qmpClient) Close() error {
	if err := q.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
