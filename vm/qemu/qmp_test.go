package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeQMP is a hand-written QMP server: it greets, answers each command with
// a scripted reply, interleaves an event, and reports fds it received.
func fakeQMP(t *testing.T, replies map[string]string) (string, <-chan int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fds := make(chan int, 4)
	go func() {
		c, err := l.Accept()
		l.Close()
		if err != nil {
			return
		}
		uc := c.(*net.UnixConn)
		defer uc.Close()
		// The fake's writes fail only once the client hung up, which the test checks.
		_, _ = uc.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4))
		for {
			n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			if oobn > 0 {
				msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
				for _, m := range msgs {
					got, _ := unix.ParseUnixRights(&m)
					for _, fd := range got {
						fds <- fd
					}
				}
			}
			sc := bufio.NewScanner(strings.NewReader(string(buf[:n])))
			for sc.Scan() {
				var req struct {
					Execute string `json:"execute"`
					ID      string `json:"id"`
				}
				if json.Unmarshal(sc.Bytes(), &req) != nil {
					continue
				}
				_, _ = uc.Write([]byte(`{"event": "NOISE", "data": {}}` + "\n"))
				body, ok := replies[req.Execute]
				if !ok {
					body = `"return": {}`
				}
				_, _ = uc.Write([]byte(`{` + body + `, "id": "` + req.ID + `"}` + "\n"))
			}
		}
	}()
	return sock, fds
}

func TestQMPClient(t *testing.T) {
	sock, fds := fakeQMP(t, map[string]string{
		"query-status": `"return": {"status": "running", "running": true}`,
		"bad":          `"error": {"class": "GenericError", "desc": "no such thing"}`,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	var st struct {
		Status string `json:"status"`
	}
	if err := q.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	if err := q.Execute(ctx, "bad", nil, nil); err == nil || !strings.Contains(err.Error(), "no such thing") {
		t.Fatalf("error reply: %v", err)
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if err := q.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": "x"}, w); err != nil {
		t.Fatal(err)
	}
	select {
	case fd := <-fds:
		unix.Close(fd)
	case <-time.After(2 * time.Second):
		t.Fatal("fd did not arrive with getfd")
	}
	// The fake sends NOISE before each reply: a subscription made before the
	// command sees it even though Wait starts after the reply.
	noise := q.Subscribe("NOISE", nil)
	defer noise.Cancel()
	if err := q.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := noise.Wait(ctx); err != nil {
		t.Fatalf("event: %v", err)
	}
}

// TestQMPSubscriptions: a subscription that is never waited on does not stall
// the reader or other commands; one made before a command keeps its event
// however late Wait comes; an event that arrives just before the connection
// ends is still delivered, and a waiter without one learns the connection
// ended.
func TestQMPSubscriptions(t *testing.T) {
	sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
		switch execute {
		case "flood":
			qmpFlood(w, 5000)
			_, _ = w.WriteString(`{"event": "JOB_STATUS_CHANGE", "data": {"id": "j1", "status": "concluded"}}` + "\n")
			qmpFlood(w, 5000)
		case "goodbye":
			_, _ = w.WriteString(`{"event": "SHUTDOWN", "data": {"guest": false}}` + "\n")
			qmpReturn(w, id, `{}`)
			w.hangUp = true
			return
		}
		qmpReturn(w, id, `{}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	// Matches every flood event and is never waited on.
	idle := q.Subscribe("RTC_CHANGE", nil)
	defer idle.Cancel()
	job := q.Subscribe("JOB_STATUS_CHANGE", func(d json.RawMessage) bool {
		var j struct{ ID string }
		return json.Unmarshal(d, &j) == nil && j.ID == "j1"
	})
	defer job.Cancel()
	if err := q.Execute(ctx, "flood", nil, nil); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if err := q.Execute(ctx, "query-status", nil, nil); err != nil {
			t.Fatalf("a command after the flood: %v", err)
		}
	}
	data, err := job.Wait(ctx)
	if err != nil || !strings.Contains(string(data), "concluded") {
		t.Fatalf("the job event: %s, %v", data, err)
	}

	shutdown := q.Subscribe("SHUTDOWN", nil)
	never := q.Subscribe("DEVICE_DELETED", matchDevice("nothing"))
	if err := q.Execute(ctx, "goodbye", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.done:
	case <-ctx.Done():
		t.Fatal("the client did not notice the hang-up")
	}
	if _, err := shutdown.Wait(ctx); err != nil {
		t.Errorf("an event that came before the hang-up: %v", err)
	}
	if _, err := never.Wait(ctx); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("a waiter on a closed connection: %v", err)
	}
	if err := q.Execute(ctx, "query-status", nil, nil); err == nil {
		t.Error("a command on a closed connection succeeded")
	}

	// Cancelled and fired subscriptions are gone: nothing accumulates.
	idle.Cancel()
	never.Cancel()
	q.mu.Lock()
	left := len(q.subs)
	q.mu.Unlock()
	if left != 0 {
		t.Errorf("%d subscriptions left behind", left)
	}
}

// TestQMPWaitHonoursContext: a waiter whose event never comes returns when
// its context ends, and the connection stays usable.
func TestQMPWaitHonoursContext(t *testing.T) {
	sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
		qmpReturn(w, id, `{}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	s := q.Subscribe("DEVICE_DELETED", nil)
	defer s.Cancel()
	wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer wcancel()
	if _, err := s.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait past its deadline: %v", err)
	}
	if err := q.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestQMPRefusesAHugeLine: a (compromised) QEMU that sends a line longer than
// maxQMPLine ends the connection instead of growing cocoond's memory.
func TestQMPRefusesAHugeLine(t *testing.T) {
	sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
		_, _ = w.WriteString(`{"return": "` + strings.Repeat("x", maxQMPLine) + `", "id": "` + id + `"}` + "\n")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, bufio.ErrTooLong) {
		t.Fatalf("a reply over %d bytes: %v", maxQMPLine, err)
	}
}
