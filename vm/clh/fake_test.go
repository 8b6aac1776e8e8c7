package clh

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The test binary doubles as a fake cloud-hypervisor and a fake virtiofsd
// (the driver runs it through a small script that sets these variables), so
// the real spawn path, fd 3 included, is what the tests exercise.
const (
	envFake   = "COCOON_FAKE"        // "clh" or "virtiofsd"
	envSpec   = "COCOON_FAKE_SPEC"   // the OpenAPI file to check requests against
	envRecord = "COCOON_FAKE_RECORD" // JSON lines: what the fake saw
	envFail   = "COCOON_FAKE_FAIL"   // "endpoint=status[xN];..." injected failures
)

func TestMain(m *testing.M) {
	switch os.Getenv(envFake) {
	case "clh":
		os.Exit(fakeCLH(os.Args[1:]))
	case "virtiofsd":
		os.Exit(fakeVirtiofsd(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// entry is one line of the record file.
type entry struct {
	Kind      string          `json:"kind"` // start, request, exit
	Pid       int             `json:"pid"`
	Args      []string        `json:"args,omitempty"`
	Method    string          `json:"method,omitempty"`
	Endpoint  string          `json:"endpoint,omitempty"`
	Body      json.RawMessage `json:"body,omitempty"`
	FDKinds   []string        `json:"fdKinds,omitempty"` // one per SCM_RIGHTS fd: fifo, file, ...
	Status    int             `json:"status,omitempty"`
	Violation string          `json:"violation,omitempty"`
	// VsockSocket is the vsock socket of the config a vm.restore read.
	VsockSocket string `json:"vsockSocket,omitempty"`
}

type recorder struct {
	mu sync.Mutex
	f  *os.File
}

func openRecorder() *recorder {
	f, err := os.OpenFile(os.Getenv(envRecord), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake: record:", err)
		os.Exit(3)
	}
	return &recorder{f: f}
}

func (r *recorder) add(e entry) {
	e.Pid = os.Getpid()
	b, _ := json.Marshal(e)
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.f.Write(append(b, '\n'))
}

// fakeVirtiofsd serves nothing on --socket-path until SIGTERM.
func fakeVirtiofsd(args []string) int {
	rec := openRecorder()
	rec.add(entry{Kind: "start", Args: append([]string{"virtiofsd"}, args...)})
	var sock, source string
	for i, a := range args {
		if s, ok := strings.CutPrefix(a, "--socket-path="); ok {
			sock = s
		}
		if a == "-o" && i+1 < len(args) && strings.HasPrefix(args[i+1], "source=") {
			source = strings.TrimPrefix(args[i+1], "source=")
		}
	}
	if st, err := os.Stat(source); err != nil || !st.IsDir() || sock == "" {
		// What virtiofsd does with a bad source: complain and exit.
		fmt.Fprintf(os.Stderr, "fake virtiofsd: bad args %q\n", args)
		return 2
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return 1
	}
	<-sigs
	l.Close() // unlinks the socket, as virtiofsd does
	return 0
}

// fakeCLH serves the API on fd 3 the way `cloud-hypervisor --api-socket
// fd=3` does, checking every request against the spec.
func fakeCLH(args []string) int {
	rec := openRecorder()
	rec.add(entry{Kind: "start", Args: args})
	if strings.Join(args, " ") != "--api-socket fd=3" {
		rec.add(entry{Kind: "exit", Violation: fmt.Sprintf("args %q, want --api-socket fd=3", args)})
		return 2
	}
	c, err := loadContract(os.Getenv(envSpec))
	if err != nil {
		rec.add(entry{Kind: "exit", Violation: "spec: " + err.Error()})
		return 2
	}
	l, err := net.FileListener(os.NewFile(3, "api-socket"))
	if err != nil {
		rec.add(entry{Kind: "exit", Violation: "fd 3 is not a listening socket: " + err.Error()})
		return 2
	}
	f := &fakeVM{rec: rec, contract: c, fails: parseFails(os.Getenv(envFail)), exit: make(chan struct{})}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(conn.(*net.UnixConn))
		}
	}()
	<-f.exit
	rec.add(entry{Kind: "exit"})
	return 0
}

type failRule struct {
	status int
	left   int // < 0: forever
}

func parseFails(s string) map[string]*failRule {
	rules := map[string]*failRule{}
	for _, r := range strings.Split(s, ";") {
		ep, spec, ok := strings.Cut(r, "=")
		if !ok {
			continue
		}
		st, n, _ := strings.Cut(spec, "x")
		rule := &failRule{left: -1}
		rule.status, _ = strconv.Atoi(st)
		if n != "" {
			rule.left, _ = strconv.Atoi(n)
		}
		rules[ep] = rule
	}
	return rules
}

// fdConn reads with recvmsg and keeps the SCM_RIGHTS fds that arrive.
type fdConn struct {
	c   *net.UnixConn
	fds []int
}

func (r *fdConn) Read(p []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(16*4))
	n, oobn, _, _, err := r.c.ReadMsgUnix(p, oob)
	if oobn > 0 {
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			r.fds = append(r.fds, fds...)
		}
	}
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	return n, err
}

func (f *fakeVM) serve(conn *net.UnixConn) {
	defer conn.Close()
	fc := &fdConn{c: conn}
	br := bufio.NewReader(fc)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(req.Body)
		fds := fc.fds
		fc.fds = nil
		status, out := f.handle(req, body, fds)
		fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nServer: Cloud Hypervisor API\r\nContent-Type: application/json\r\n"+
			"Content-Length: %d\r\n\r\n%s", status, http.StatusText(status), len(out), out)
		if req.URL.Path == "/api/v1/vmm.shutdown" && status < 300 {
			close(f.exit)
			return
		}
	}
}

func (f *fakeVM) handle(req *http.Request, body []byte, fds []int) (int, []byte) {
	e := entry{Kind: "request", Method: req.Method, Endpoint: strings.TrimPrefix(req.URL.Path, "/api/v1/")}
	if json.Valid(body) {
		e.Body = body
	}
	for _, fd := range fds {
		e.FDKinds = append(e.FDKinds, fdKind(fd))
		unix.Close(fd)
	}
	var status int
	var out []byte
	cr, err := f.contract.checkRequest(req, body)
	if err != nil {
		e.Violation = err.Error()
		status, out = fail(http.StatusBadRequest, "contract: "+err.Error())
	} else {
		status, out = f.answer(e.Endpoint, body, len(fds), &e)
		if err := f.contract.checkResponse(cr, status, http.Header{"Content-Type": {"application/json"}}, out); err != nil {
			e.Violation = err.Error()
		}
	}
	e.Status = status
	f.rec.add(e)
	return status, out
}

func fdKind(fd int) string {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "invalid"
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFREG:
		return "file"
	case unix.S_IFCHR:
		return "chardev"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "other"
}

// fail is a CH error answer: the status and a JSON array of messages.
func fail(status int, msgs ...string) (int, []byte) {
	b, _ := json.Marshal(msgs)
	return status, b
}
