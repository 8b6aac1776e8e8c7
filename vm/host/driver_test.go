package host

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/agent"
	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

// TestMain makes the test binary a real host-mode agent when the driver
// runs it as one ("<binary> host --socket ..."), so these tests drive the
// driver and the agent's host mode together.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == agentapi.HostModeArg {
		if os.Getenv("FAKE_AGENT_FAIL") != "" {
			os.Stderr.WriteString("fake agent refuses to start\n")
			os.Exit(3)
		}
		opts, err := agent.ParseHostArgs(os.Args[2:])
		if err != nil {
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
		defer stop()
		if err := agent.ServeHost(ctx, opts); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestCommand(t *testing.T) {
	spec := &vm.Spec{ID: "p", RunDir: "/run/cocoon/vm/p"}
	base := []string{"/bin/cocoon-agent", "host", "--socket", "/run/cocoon/vm/p/agent.sock", "--token-file", "/run/cocoon/vm/p/agent-token",
		"--state-dir", "/run/cocoon/vm/p/containers", "--log-level", "info"}
	for _, tt := range []struct {
		name    string
		netns   string
		systemd bool
		want    []string
	}{
		{name: "host network: the agent runs as it is", want: base},
		{name: "a pod netns: nsenter execs the agent in it", netns: "/run/cocoon/netns/p",
			want: append([]string{"/usr/bin/nsenter", "--net=/run/cocoon/netns/p", "--"}, base...)},
		{name: "systemd cgroups", systemd: true, want: append(slices.Clone(base), "--systemd-cgroup")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := *spec
			s.Netns = tt.netns
			got := Command("/bin/cocoon-agent", "/usr/bin/nsenter", &s, "/run/cocoon/vm/p/agent-token", tt.systemd, logrus.InfoLevel)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func testDriver(t *testing.T) *Driver {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return New(Options{Agent: exe, Log: logrus.NewEntry(log)})
}

// healthy checks the agent answers its health check with the pod's token.
func healthy(ctx context.Context, v vm.VMM) error {
	c, err := agentclient.Wait(ctx, v.DialAgent)
	if err != nil {
		return err
	}
	return c.Close()
}

func TestCreateAdoptStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runDir := filepath.Join(t.TempDir(), "pod")
	d := testDriver(t)
	v, err := d.Create(ctx, &vm.Spec{ID: "pod", RunDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = v.Stop(context.Background()) })
	if err := healthy(ctx, v); err != nil {
		t.Fatalf("new agent: %v", err)
	}
	st := v.State()
	if st.Driver != Name || st.Pid == 0 || st.AgentSocket != filepath.Join(runDir, "agent.sock") {
		t.Fatalf("state %+v", st)
	}
	if fi, err := os.Stat(st.AgentSocket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent socket %v %v: want 0600", fi, err)
	}

	// A restarted cocoond: the agent keeps running and is adopted.
	v.(*hostVM).Detach()
	adopted, err := testDriver(t).Adopt(ctx, st)
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	if err := healthy(ctx, adopted); err != nil {
		t.Fatalf("adopted agent: %v", err)
	}
	if err := adopted.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-adopted.Done():
	default:
		t.Fatal("the agent runs after Stop")
	}
	if (vm.Process{Pid: st.Pid, StartTime: st.StartTime}).Alive() {
		t.Fatal("the agent process is alive after Stop")
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("run dir left: %v", err)
	}
}

func TestAdoptOfADeadAgentRemovesIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runDir := filepath.Join(t.TempDir(), "pod")
	v, err := testDriver(t).Create(ctx, &vm.Spec{ID: "pod", RunDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	st := v.State()
	v.(*hostVM).Detach()
	if err := unix.Kill(st.Pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-v.Done()
	if _, err := testDriver(t).Adopt(ctx, st); !errors.Is(err, vm.ErrNotRunning) {
		t.Fatalf("adopt of a dead agent: %v, want ErrNotRunning", err)
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("run dir left: %v", err)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	t.Setenv("FAKE_AGENT_FAIL", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runDir := filepath.Join(t.TempDir(), "pod")
	_, err := testDriver(t).Create(ctx, &vm.Spec{ID: "pod", RunDir: runDir})
	if !errors.Is(err, vm.ErrNotRunning) {
		t.Fatalf("got %v, want the agent's exit", err)
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("run dir left: %v", err)
	}
}

func TestCreateRefusesVMDevices(t *testing.T) {
	_, err := testDriver(t).Create(context.Background(), &vm.Spec{ID: "pod", RunDir: t.TempDir(), Shares: []vm.Share{{Tag: "x", Source: "/tmp"}}})
	if err == nil {
		t.Fatal("a host pod with a share was created")
	}
}
