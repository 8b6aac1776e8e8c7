package qemu

import (
	"bufio"
	"context"
	"encoding/json"
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
		uc.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
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
				uc.Write([]byte(`{"event": "NOISE", "data": {}}` + "\n"))
				body, ok := replies[req.Execute]
				if !ok {
					body = `"return": {}`
				}
				uc.Write([]byte(`{` + body + `, "id": "` + req.ID + `"}` + "\n"))
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
	if err := q.WaitEvent(ctx, "NOISE", nil); err != nil {
		t.Fatalf("event: %v", err)
	}
}
