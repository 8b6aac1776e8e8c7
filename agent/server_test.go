package agent

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// testToken is the token serveForTest's agent expects and its client sends.
// Random bytes, as real tokens are: not valid UTF-8.
var testToken = []byte("\xff\xfe0123456789abcdef0123456789abcd")

// serveForTest runs the real ttRPC server on a unix socket, as a VM booted
// with a token and the debug console, and returns clients that send the token
// as cocoond's do.
func serveForTest(t *testing.T) (agentapi.AgentClient, agentapi.HealthService) {
	t.Helper()
	return serveWithPolicy(t, Policy{Token: testToken, DebugConsole: true}, agentclient.WithToken(testToken))
}

func serveWithPolicy(t *testing.T, policy Policy, opts ...ttrpc.ClientOpts) (agentapi.AgentClient, agentapi.HealthService) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeOn(ctx, l, NewServer(func() {}, policy)) }()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn, opts...)
	t.Cleanup(func() {
		client.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return agentapi.NewAgentClient(client), agentapi.NewHealthClient(client)
}

func TestServerOverTTRPC(t *testing.T) {
	a, h := serveForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	check, err := h.Check(ctx, &agentapi.CheckRequest{})
	if err != nil || check.Status != agentapi.CheckResponse_SERVING {
		t.Fatalf("check: %v %v", check, err)
	}

	for _, tt := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"remove missing container is fine", func() error {
			_, err := a.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: "nope"})
			return err
		}, codes.OK},
		{"start missing container", func() error {
			_, err := a.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound},
		{"wait on a missing container", func() error {
			_, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound},
		{"create with a bad id", func() error {
			_, err := a.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "../x", OciSpec: []byte("{}")})
			return err
		}, codes.InvalidArgument},
		{"create with a spec that is not JSON", func() error {
			_, err := a.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "c", OciSpec: []byte("{")})
			return err
		}, codes.InvalidArgument},
		{"create without process or root", func() error {
			_, err := a.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "c", OciSpec: []byte("{}")})
			return err
		}, codes.InvalidArgument},
		{"stdin of a missing process", func() error {
			_, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{ContainerId: "nope", Data: []byte("x")})
			return err
		}, codes.NotFound},
		{"update a missing interface", func() error {
			_, err := a.UpdateInterface(ctx, &agentapi.Interface{HwAddr: "02:00:00:00:00:99", Name: "eth9"})
			return err
		}, codes.NotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(tt.call()); got != tt.want {
				t.Fatalf("code %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseLogLevel(t *testing.T) {
	for cmdline, want := range map[string]logrus.Level{
		"console=ttyS0 cocoon.log=debug panic=-1": logrus.DebugLevel,
		"cocoon.log=warn":                         logrus.WarnLevel,
		"cocoon.log=loud":                         logrus.InfoLevel,
		"quiet":                                   logrus.InfoLevel,
	} {
		if got := parseLogLevel(cmdline); got != want {
			t.Errorf("%q: %v, want %v", cmdline, got, want)
		}
	}
}

func TestWriteSysctlRejectsBadKeys(t *testing.T) {
	for _, key := range []string{"", "net/ipv4", "net..x", "kernel.\x00"} {
		if err := writeSysctl(key, "1"); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%q: %v", key, err)
		}
	}
}

func TestRecvFd(t *testing.T) {
	parent, child, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	defer child.Close()
	f, err := os.CreateTemp(t.TempDir(), "passed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("payload"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendmsg(int(child.Fd()), []byte("pty"), unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	got, err := recvFd(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	data, err := os.ReadFile("/proc/self/fd/" + strconv.Itoa(int(got.Fd())))
	if err != nil || string(data) != "payload" {
		t.Fatalf("received fd reads %q, %v", data, err)
	}
}

func TestCountCPUList(t *testing.T) {
	for list, want := range map[string]uint32{"0": 1, "0-1": 2, "0-1,3": 3, "0,2-5,7": 6, "": 0} {
		if got := countCPUList(list); got != want {
			t.Errorf("%q: %d, want %d", list, got, want)
		}
	}
}

func TestCatchesReadsSigCgt(t *testing.T) {
	plain := exec.Command("sleep", "10")
	trapping := exec.Command("sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done")
	for _, c := range []*exec.Cmd{plain, trapping} {
		if err := c.Start(); err != nil {
			t.Skipf("skipping: %v", err)
		}
		defer func() { _ = c.Process.Kill(); _ = c.Wait() }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for !catches(trapping.Process.Pid, unix.SIGTERM) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the shell sets its trap after starting
	}
	if catches(plain.Process.Pid, unix.SIGTERM) || !catches(trapping.Process.Pid, unix.SIGTERM) {
		t.Fatalf("SigCgt misread: sleep %v, trapping shell %v", catches(plain.Process.Pid, unix.SIGTERM), catches(trapping.Process.Pid, unix.SIGTERM))
	}
}

// TestSelfRSS: OnlineCPUMem's guest details report the agent's own resident memory.
func TestSelfRSS(t *testing.T) {
	t.Parallel()
	if rss := selfRSS(); rss < 1<<20 {
		t.Fatalf("agent RSS %d bytes: /proc/self/status misread", rss)
	}
}

func TestAddEntropyBounds(t *testing.T) {
	if err := addEntropy(nil); err != nil {
		t.Errorf("no entropy: %v, want nothing done", err)
	}
	if err := addEntropy(make([]byte, maxEntropy+1)); status.Code(err) != codes.InvalidArgument {
		t.Errorf("oversized entropy: %v, want InvalidArgument", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("crediting entropy needs CAP_SYS_ADMIN: not root")
	}
	if err := addEntropy([]byte("0123456789abcdef")); err != nil {
		t.Errorf("16 bytes: %v", err)
	}
}

func TestSetClockZeroIsNoop(t *testing.T) {
	if err := setClock(0); err != nil {
		t.Errorf("setClock(0) = %v, want nothing done", err)
	}
}
