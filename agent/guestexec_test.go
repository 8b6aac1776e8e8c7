package agent

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// hostShell is the test's stand-in for the guest's busybox sh.
func hostShell(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("skipping: no /bin/sh on this machine")
	}
}

func guestProcessJSON(t *testing.T, size *specs.Box, args ...string) []byte {
	t.Helper()
	b, err := json.Marshal(specs.Process{
		Args: args, Env: []string{"PATH=/usr/bin:/bin", "HOME=/root", "TERM=dumb"}, Cwd: "/",
		User:        specs.User{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())},
		ConsoleSize: size,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll drains one output stream of a guest exec.
func readAll(ctx context.Context, t *testing.T, a agentapi.AgentClient, execID string, which agentapi.ReadOutputRequest_Stream) <-chan string {
	t.Helper()
	out := make(chan string, 1)
	stream, err := a.ReadOutput(ctx, &agentapi.ReadOutputRequest{ExecId: execID, Stream: which})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		var b strings.Builder
		for {
			chunk, err := stream.Recv()
			if err != nil {
				out <- b.String()
				return
			}
			b.Write(chunk.GetData())
		}
	}()
	return out
}

func TestGuestRootExecWithPipes(t *testing.T) {
	defer func(g time.Duration) { forgetGrace = g }(forgetGrace)
	forgetGrace = 100 * time.Millisecond
	hostShell(t)
	a, _ := serveForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "sh1", GuestRoot: true, Stdin: true,
		Process: guestProcessJSON(t, nil, "sh")})
	if err != nil {
		t.Fatal(err)
	}
	stdout := readAll(ctx, t, a, "sh1", agentapi.ReadOutputRequest_STDOUT)
	stderr := readAll(ctx, t, a, "sh1", agentapi.ReadOutputRequest_STDERR)
	script := "echo out-$HOME; pwd; echo err >&2; exit 3\n"
	if _, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{ExecId: "sh1", Data: []byte(script)}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CloseStdin(ctx, &agentapi.ProcessRequest{ExecId: "sh1"}); err != nil {
		t.Fatal(err)
	}
	res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "sh1"})
	if err != nil || res.GetExitCode() != 3 {
		t.Fatalf("wait: %v, %v; want exit 3", res, err)
	}
	if got := <-stdout; got != "out-/root\n/\n" {
		t.Fatalf("stdout %q", got)
	}
	if got := <-stderr; got != "err\n" {
		t.Fatalf("stderr %q", got)
	}
	// Its exit was reported: the exec stays a grace for late readers of its
	// output, then it is gone.
	if res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "sh1"}); err != nil || res.GetExitCode() != 3 {
		t.Fatalf("second wait within the grace: %v, %v", res, err)
	}
	for {
		_, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "sh1"})
		if status.Code(err) == codes.NotFound {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the exec is still there after its grace: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestGuestRootExecWithTerminal(t *testing.T) {
	hostShell(t)
	a, _ := serveForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The shell reports its terminal's size once told to go on.
	_, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "tty1", GuestRoot: true, Stdin: true, Tty: true,
		Process: guestProcessJSON(t, &specs.Box{Height: 30, Width: 100}, "sh", "-c", "read go; stty size; test -t 0 && echo is-a-tty; read go; stty size")})
	if err != nil {
		t.Fatal(err)
	}
	stdout := readAll(ctx, t, a, "tty1", agentapi.ReadOutputRequest_STDOUT)
	if _, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{ExecId: "tty1", Data: []byte("go\n")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := a.ResizeTty(ctx, &agentapi.ResizeTtyRequest{ExecId: "tty1", Rows: 50, Columns: 132}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{ExecId: "tty1", Data: []byte("go\n")}); err != nil {
		t.Fatal(err)
	}
	res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "tty1"})
	if err != nil || res.GetExitCode() != 0 {
		t.Fatalf("wait: %v, %v", res, err)
	}
	got := <-stdout
	for _, want := range []string{"30 100", "is-a-tty", "50 132"} {
		if !strings.Contains(got, want) {
			t.Fatalf("terminal output %q lacks %q", got, want)
		}
	}
}

func TestGuestRootExecSignalEndsSession(t *testing.T) {
	hostShell(t)
	a, _ := serveForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "job", GuestRoot: true,
		Process: guestProcessJSON(t, nil, "sh", "-c", "sleep 60 & echo $!; wait")})
	if err != nil {
		t.Fatal(err)
	}
	stdout := readAll(ctx, t, a, "job", agentapi.ReadOutputRequest_STDOUT)
	time.Sleep(200 * time.Millisecond)
	if _, err := a.SignalProcess(ctx, &agentapi.SignalProcessRequest{ExecId: "job", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "job"})
	if err != nil || res.GetExitCode() != 128+9 {
		t.Fatalf("wait: %v, %v; want 137", res, err)
	}
	// The background job was in the shell's session and died with it.
	pid := strings.TrimSpace(<-stdout)
	deadline := time.Now().Add(2 * time.Second)
	for {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background job %s outlived its session", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestGuestRootExecRefuses(t *testing.T) {
	a, _ := serveForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tt := range []struct {
		name string
		req  *agentapi.ExecProcessRequest
		want codes.Code
	}{
		{"with a container id", &agentapi.ExecProcessRequest{ContainerId: "c", ExecId: "x", GuestRoot: true, Process: guestProcessJSON(t, nil, "sh")}, codes.InvalidArgument},
		{"without an exec id", &agentapi.ExecProcessRequest{GuestRoot: true, Process: guestProcessJSON(t, nil, "sh")}, codes.InvalidArgument},
		{"without args", &agentapi.ExecProcessRequest{ExecId: "x", GuestRoot: true, Process: guestProcessJSON(t, nil)}, codes.InvalidArgument},
		{"process not JSON", &agentapi.ExecProcessRequest{ExecId: "x", GuestRoot: true, Process: []byte("{")}, codes.InvalidArgument},
		{"program missing from the guest", &agentapi.ExecProcessRequest{ExecId: "x", GuestRoot: true, Process: guestProcessJSON(t, nil, "no-such-program-here")}, codes.FailedPrecondition},
		{"absolute program missing", &agentapi.ExecProcessRequest{ExecId: "x", GuestRoot: true, Process: guestProcessJSON(t, nil, "/nonexistent/sh")}, codes.FailedPrecondition},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.ExecProcess(ctx, tt.req)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("code %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	if _, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{ExecId: "nope", Data: []byte("x")}); status.Code(err) != codes.NotFound {
		t.Fatalf("stdin of a missing guest exec: %v, want NotFound", err)
	}
}

func TestLookGuestPath(t *testing.T) {
	hostShell(t)
	if p, err := lookGuestPath("sh", []string{"PATH=/nonexistent:/bin"}); err != nil || p != "/bin/sh" {
		t.Fatalf("sh → %q, %v", p, err)
	}
	if p, err := lookGuestPath("sh", nil); err != nil || p != "/bin/sh" {
		t.Fatalf("sh with the default PATH → %q, %v", p, err)
	}
	if _, err := lookGuestPath("sh", []string{"PATH=/nonexistent"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cocoon guest build") {
		t.Fatalf("sh on an empty PATH: %v", err)
	}
}
