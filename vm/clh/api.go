package clh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
)

// apiBase is where Cloud Hypervisor serves its API; the host part is
// irrelevant on a unix socket but must be a valid URL.
const apiBase = "http://localhost/api/v1"

// APIError is a Cloud Hypervisor answer outside 2xx: the HTTP status and the
// error chain CH sends as a JSON array of strings.
type APIError struct {
	Endpoint string
	Status   int
	Messages []string
}

func (e *APIError) Error() string {
	msg := strings.Join(e.Messages, ": ")
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("cloud-hypervisor %s: HTTP %d: %s", e.Endpoint, e.Status, msg)
}

// api talks to one Cloud Hypervisor process over its unix socket.
type api struct {
	sock string
	c    *clhapi.Client
}

func newAPI(sock string) *api {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		// One connection per request: nothing idles in CH's small connection
		// table, and a restarted cocoond never reuses a dead connection.
		DisableKeepAlives:  true,
		DisableCompression: true,
	}
	// NewClient only fails on a malformed server URL, and apiBase is constant.
	c, err := clhapi.NewClient(apiBase, clhapi.WithHTTPClient(&http.Client{Transport: tr}))
	if err != nil {
		panic(err)
	}
	return &api{sock: sock, c: c}
}

// check reads resp and turns anything but a 2xx into an *APIError. When out
// is non-nil a 200 body is decoded into it. The generated response parsers
// are not used: CH labels even empty 204s application/json, which they would
// try to decode.
func check(endpoint string, resp *http.Response, err error, out any) error {
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: reading response: %w", endpoint, err)
	}
	return decode(endpoint, resp.StatusCode, body, out)
}

func decode(endpoint string, status int, body []byte, out any) error {
	if status < 200 || status > 299 {
		e := &APIError{Endpoint: endpoint, Status: status}
		if json.Unmarshal(body, &e.Messages) != nil {
			// Not the documented array: keep whatever text came back.
			if s := strings.TrimSpace(string(body)); s != "" {
				e.Messages = []string{s}
			}
		}
		return e
	}
	if out != nil && status == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("cloud-hypervisor %s: decoding response: %w", endpoint, err)
		}
	}
	return nil
}

// ping waits until the API answers, every 10 ms for up to 10 s, and fails
// early when the process exits.
func (a *api) ping(ctx context.Context, exited <-chan struct{}) (*clhapi.VmmPingResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var last error
	for {
		var pong clhapi.VmmPingResponse
		resp, err := a.c.PingVMM(ctx)
		if last = check("vmm.ping", resp, err, &pong); last == nil {
			return &pong, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("cloud-hypervisor exited before its API answered: %w", last)
		case <-ctx.Done():
			return nil, fmt.Errorf("cloud-hypervisor API did not answer: %w", last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (a *api) info(ctx context.Context) (*clhapi.VmInfo, error) {
	var info clhapi.VmInfo
	resp, err := a.c.InfoVM(ctx)
	if err := check("vm.info", resp, err, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// expectState fails unless vm.info reports want.
func (a *api) expectState(ctx context.Context, want clhapi.VmState) error {
	info, err := a.info(ctx)
	if err != nil {
		return err
	}
	if info.State != want {
		return fmt.Errorf("cloud-hypervisor vm.info: state %s, want %s", info.State, want)
	}
	return nil
}

// putWithFiles sends PUT /api/v1/<endpoint> with a JSON body and files as
// SCM_RIGHTS. OpenAPI cannot describe descriptors, so this is hand-written:
// the whole request goes out in one sendmsg carrying the rights, which is how
// CH's HTTP server (micro_http) attaches them to the request it parses.
func (a *api) putWithFiles(ctx context.Context, endpoint string, body any, files []*os.File, out any) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return err
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "PUT /api/v1/%s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", endpoint, len(payload))
	req.Write(payload)

	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", a.sock)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: %w", endpoint, err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	// Unblock reads and writes when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if err := sendWithFiles(conn, req.Bytes(), files); err != nil {
		return fmt.Errorf("cloud-hypervisor %s: %w", endpoint, errors.Join(err, ctx.Err()))
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		err = errors.Join(err, ctx.Err())
	}
	return check(endpoint, resp, err, out)
}

// sendWithFiles writes b with files' descriptors attached to its first
// bytes. The descriptors are used under RawConn.Control so they cannot be
// closed underneath the send.
func sendWithFiles(conn *net.UnixConn, b []byte, files []*os.File) error {
	fds := make([]int, 0, len(files))
	var send func(i int) error
	send = func(i int) error {
		if i < len(files) {
			rc, err := files[i].SyscallConn()
			if err != nil {
				return err
			}
			var inner error
			if err := rc.Control(func(fd uintptr) {
				fds = append(fds, int(fd))
				inner = send(i + 1)
			}); err != nil {
				return err
			}
			return inner
		}
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		n, _, err := conn.WriteMsgUnix(b, oob, nil)
		if err != nil {
			return err
		}
		// A stream socket may take less; the rights went with the first bytes.
		_, err = conn.Write(b[n:])
		return err
	}
	return send(0)
}
