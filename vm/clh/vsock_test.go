package clh

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/vm"
)

// vsockServer is a fake CH vsock socket; answer decides what the n-th
// connection (from 0) gets after its CONNECT line ("" closes without OK).
func vsockServer(path string, answer func(n int) string) (net.Listener, *atomic.Int32, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, nil, err
	}
	n := new(atomic.Int32)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			i := int(n.Add(1)) - 1
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil || line != "CONNECT 1024\n" {
					return
				}
				a := answer(i)
				if a == "" {
					return
				}
				// One write: the greeting arrives with the OK line.
				_, _ = io.WriteString(c, a)
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return l, n, nil
}

func TestDialHybridVsock(t *testing.T) {
	for _, tt := range []struct {
		name      string
		answer    func(n int) string
		late      time.Duration // socket appears after this long
		timeout   time.Duration
		exited    bool
		wantData  string
		wantErr   error
		wantText  string
		wantConns int32 // at least
	}{
		{name: "closed without OK, then OK with data right behind it",
			answer:   func(n int) string { return map[bool]string{true: "", false: "OK 1073741824\nHELLO"}[n < 2] },
			wantData: "HELLO", wantConns: 3},
		{name: "socket not there yet", late: 100 * time.Millisecond,
			answer: func(int) string { return "OK 5\nHI" }, wantData: "HI", wantConns: 1},
		{name: "nothing ever listens: deadline", timeout: 200 * time.Millisecond,
			answer: func(int) string { return "" }, wantErr: context.DeadlineExceeded, wantConns: 2},
		{name: "VM gone", exited: true, timeout: 5 * time.Second,
			answer: func(int) string { return "" }, wantErr: vm.ErrNotRunning},
		{name: "garbled answer is not retried", timeout: 5 * time.Second,
			answer: func(int) string { return "NOPE\n" }, wantText: `unexpected answer "NOPE"`, wantConns: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "v.sock")
			type server struct {
				l     net.Listener
				conns *atomic.Int32
				err   error
			}
			ready := make(chan server, 1)
			go func() {
				time.Sleep(tt.late)
				l, n, err := vsockServer(path, tt.answer)
				ready <- server{l, n, err}
			}()
			if tt.late == 0 {
				srv := <-ready
				ready <- srv
			}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			exited := make(chan struct{})
			if tt.exited {
				close(exited)
			}
			conn, err := dialHybridVsock(ctx, path, agentPort, exited)
			if tt.wantErr != nil || tt.wantText != "" {
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.wantText) {
					t.Fatalf("err = %v, want %v %q", err, tt.wantErr, tt.wantText)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, len(tt.wantData))
				_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != tt.wantData {
					t.Errorf("read %q, %v; want %q (bytes after OK lost?)", buf, err, tt.wantData)
				}
				conn.Close()
			}
			srv := <-ready
			if srv.err != nil {
				t.Fatal(srv.err)
			}
			srv.l.Close()
			if srv.conns.Load() < tt.wantConns {
				t.Errorf("%d connections, want at least %d", srv.conns.Load(), tt.wantConns)
			}
		})
	}
}
