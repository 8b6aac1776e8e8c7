package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// TestMain lets the test binary be the pause process the host mode starts
// (as /proc/self/exe pause), as cocoon-agent's main does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "pause" {
		RunPause()
	}
	os.Exit(m.Run())
}

func TestParseHostArgs(t *testing.T) {
	good := []string{"--socket", "/run/x/agent.sock", "--token-file", "/run/x/agent-token", "--state-dir", "/run/x/containers"}
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string
		systemd bool
	}{
		{name: "all paths", args: good},
		{name: "systemd cgroups", args: append([]string{"--systemd-cgroup"}, good...), systemd: true},
		{name: "no socket", args: good[2:], wantErr: "--socket"},
		{name: "relative state dir", args: append(good[:4:4], "--state-dir", "containers"), wantErr: "--state-dir"},
		{name: "stray argument", args: append(good[:6:6], "extra"), wantErr: "unexpected"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, err := ParseHostArgs(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Socket != "/run/x/agent.sock" || o.TokenFile != "/run/x/agent-token" || o.StateDir != "/run/x/containers" || o.SystemdCgroup != tt.systemd {
				t.Fatalf("%+v", o)
			}
		})
	}
}

func TestPrepareSpecJoinsThePodsNamespaces(t *testing.T) {
	open := func() *os.File {
		f, err := os.Open("/proc/self/ns/ipc")
		if err != nil {
			t.Skip("no /proc/self/ns:", err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	ipc, uts := open(), open()
	fdPath := func(f *os.File) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()) }
	own, err := ownOOMScoreAdj()
	if err != nil {
		t.Fatal(err)
	}
	lower, higher := own-1, own+1
	for _, tt := range []struct {
		name     string
		ns       []specs.LinuxNamespace
		oom      *int
		wantNS   []specs.LinuxNamespace
		wantOOM  *int
		wantCode codes.Code
	}{
		{
			name:   "placeholders become the pod's namespaces",
			ns:     []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: agentapi.HostPodIPCNamespace}, {Type: specs.UTSNamespace, Path: agentapi.HostPodUTSNamespace}, {Type: specs.MountNamespace}},
			wantNS: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: fdPath(ipc)}, {Type: specs.UTSNamespace, Path: fdPath(uts)}, {Type: specs.MountNamespace}},
		},
		{
			name:   "other paths are left alone (the CNI netns)",
			ns:     []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/run/cocoon/netns/x"}},
			wantNS: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/run/cocoon/netns/x"}},
		},
		{
			name:     "a shared PID namespace the pod does not have",
			ns:       []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: agentapi.HostPodPIDNamespace}},
			wantCode: codes.FailedPrecondition,
		},
		{name: "an OOM score below the agent's is raised to it", oom: &lower, wantOOM: &own},
		{name: "an OOM score above the agent's stays", oom: &higher, wantOOM: &higher},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := &hostPod{ns: map[string]*os.File{agentapi.HostPodIPCNamespace: ipc, agentapi.HostPodUTSNamespace: uts}}
			s := &specs.Spec{Process: &specs.Process{OOMScoreAdj: tt.oom}, Linux: &specs.Linux{Namespaces: tt.ns}}
			err := h.prepareSpec(s)
			if tt.wantCode != codes.OK {
				if status.Code(err) != tt.wantCode {
					t.Fatalf("got %v, want %v", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(s.Linux.Namespaces) != fmt.Sprint(tt.wantNS) {
				t.Fatalf("namespaces %v, want %v", s.Linux.Namespaces, tt.wantNS)
			}
			if (tt.wantOOM == nil) != (s.Process.OOMScoreAdj == nil) || (tt.wantOOM != nil && *tt.wantOOM != *s.Process.OOMScoreAdj) {
				t.Fatalf("oom score adj %v, want %v", s.Process.OOMScoreAdj, tt.wantOOM)
			}
		})
	}
}

// serveHostForTest runs ServeHost on a socket in a temp dir with a token
// file and returns a client that sends the token, and ServeHost's result.
func serveHostForTest(t *testing.T) (agentapi.AgentClient, string, <-chan error) {
	t.Helper()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "agent-token")
	if err := os.WriteFile(tokenFile, testToken, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ServeHost(ctx, HostOptions{Socket: sock, TokenFile: tokenFile, StateDir: filepath.Join(dir, "containers")})
	}()
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
	}
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn, agentclient.WithToken(testToken))
	t.Cleanup(func() { client.Close(); cancel() })
	return agentapi.NewAgentClient(client), sock, done
}

func TestHostModeRefusesToConfigureTheHost(t *testing.T) {
	a, sock, _ := serveHostForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v: want mode 0600", st, err)
	}
	for name, call := range map[string]func() error{
		"UpdateInterface": func() error { _, err := a.UpdateInterface(ctx, &agentapi.Interface{Name: "eth0"}); return err },
		"UpdateRoutes":    func() error { _, err := a.UpdateRoutes(ctx, &agentapi.Routes{}); return err },
		"OnlineCPUMem":    func() error { _, err := a.OnlineCPUMem(ctx, &emptypb.Empty{}); return err },
		"guest-root exec": func() error {
			_, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "x", GuestRoot: true, Process: []byte(`{"args":["true"]}`)})
			return err
		},
	} {
		if code := status.Code(call()); code != codes.PermissionDenied {
			t.Errorf("%s: got %v, want PermissionDenied", name, code)
		}
	}
	// The token is checked as in a VM.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn, agentclient.WithToken([]byte("0123456789abcdef0123456789abcdef")))
	defer c.Close()
	if _, err := agentapi.NewAgentClient(c).OnlineCPUMem(ctx, &emptypb.Empty{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: got %v, want Unauthenticated", err)
	}
}

func TestHostModeSandboxLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes IPC and UTS namespaces")
	}
	a, sock, done := serveHostForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hostname, _ := os.Hostname()
	if _, err := a.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: "p", Hostname: "a-pod-name", SharedPidNamespace: true}); err != nil {
		t.Fatal(err)
	}
	if h, _ := os.Hostname(); h != hostname {
		t.Fatalf("the host's hostname changed to %q", h)
	}
	if _, err := a.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: "p"}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second CreateSandbox: %v", err)
	}
	if len(pauseProcesses(t)) != 1 {
		t.Fatalf("pause processes %v, want the pod's one", pauseProcesses(t))
	}
	if _, err := a.DestroySandbox(ctx, &agentapi.DestroySandboxRequest{SandboxId: "p"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ServeHost: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the agent still serves after DestroySandbox")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(pauseProcesses(t)) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the pod's pause process outlived its agent: %v", pauseProcesses(t))
		}
	}
}

// pauseProcesses lists live host-mode pause processes this test started.
func pauseProcesses(t *testing.T) []int {
	t.Helper()
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		_, rest, _ := strings.Cut(string(stat), ") ")
		fields := strings.Fields(rest) // state, ppid, ...
		if strings.Contains(string(cmdline), "pause\x00"+pauseExitWithParent) && len(fields) > 1 &&
			fields[0] != "Z" && fields[1] == strconv.Itoa(os.Getpid()) {
			out = append(out, pid)
		}
	}
	return out
}

func TestUnshareIPCUTSLeavesTheCallerAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes IPC and UTS namespaces")
	}
	ipc, uts, err := unshareIPCUTS("in-the-pod")
	if err != nil {
		t.Fatal(err)
	}
	defer ipc.Close()
	defer uts.Close()
	// thread-self: the pod's thread may be the main thread, which Go keeps
	// (wedged, running nothing) rather than ending; /proc/self shows it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var own, pods unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/uts", &own); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(uts.Fd()), &pods); err != nil {
		t.Fatal(err)
	}
	if own.Ino == pods.Ino {
		t.Fatal("the pod's UTS namespace is the agent's own")
	}
	if h, _ := os.Hostname(); h == "in-the-pod" {
		t.Fatal("the agent's hostname changed")
	}
}

// outputStream is a ReadOutput stream whose Send fails while failing is set.
type outputStream struct {
	agentapi.Agent_ReadOutputServer
	failing bool
	got     []byte
}

func (s *outputStream) Send(c *agentapi.OutputChunk) error {
	if s.failing {
		return errors.New("connection gone")
	}
	s.got = append(s.got, c.GetData()...)
	return nil
}

// TestReadOutputKeepsWhatAFailedSendDidNotDeliver: output read from the
// process while the reader's connection died (cocoond restarting) goes to
// the next reader first, so no log line is lost.
func TestReadOutputKeepsWhatAFailedSendDidNotDeliver(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := NewServer(func() {}, Policy{})
	s.engine.containers["c"] = &container{id: "c", init: &process{stdout: r, done: make(chan struct{})}}
	req := &agentapi.ReadOutputRequest{ContainerId: "c", Stream: agentapi.ReadOutputRequest_STDOUT}
	ctx := context.Background()
	if _, err := w.Write([]byte("line-1\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.ReadOutput(ctx, req, &outputStream{failing: true}); err == nil {
		t.Fatal("a failed send did not end the stream")
	}
	if _, err := w.Write([]byte("line-2\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	next := &outputStream{}
	if err := s.ReadOutput(ctx, req, next); err != nil {
		t.Fatal(err)
	}
	if string(next.got) != "line-1\nline-2\n" {
		t.Fatalf("the next reader got %q", next.got)
	}
}

// TestLateReaderGetsTheOutputOfAFinishedExec: cocoond asks for an exec's
// output and its exit at once; when the exit is reported first (a process
// that ends at once, as on a host pod), the output is still there.
func TestLateReaderGetsTheOutputOfAFinishedExec(t *testing.T) {
	hostShell(t)
	a, _ := serveForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "quick", GuestRoot: true, Process: guestProcessJSON(t, nil, "/bin/sh", "-c", "echo late")}); err != nil {
		t.Fatal(err)
	}
	if res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "quick"}); err != nil || res.GetExitCode() != 0 {
		t.Fatalf("wait: %v %v", res, err)
	}
	if got := <-readAll(ctx, t, a, "quick", agentapi.ReadOutputRequest_STDOUT); got != "late\n" {
		t.Fatalf("stdout read after the exit was reported: %q", got)
	}
}
