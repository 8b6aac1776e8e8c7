package qemu

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm"
)

func TestConfinedCommandDropsEverythingBeforeQEMU(t *testing.T) {
	argv := confinedCommand("/usr/bin/setpriv", "/usr/bin/qemu-system-x86_64", []string{"-S"})
	want := []string{"/usr/bin/setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--", "/usr/bin/qemu-system-x86_64", "-S"}
	if !slices.Equal(argv, want) {
		t.Fatalf("argv = %q, want %q", argv, want)
	}
}

func TestCommandLineSandboxAndToken(t *testing.T) {
	spec := &vm.Spec{ID: "x", RunDir: "/run/x", Kernel: "k", Initramfs: "i", VCPUs: 1, MemoryMiB: 128,
		// A configured argument cannot turn the token off: the driver's comes last.
		KernelArgs: []string{"cocoon.agent_token=none", "cocoon.debug_console=1", "cocoon.log=debug"}}
	for _, tc := range []struct {
		name, tokenFile string
		console         bool
		wantTail        []string
	}{
		{name: "with a token", tokenFile: "/run/x/agent-token", wantTail: []string{"cocoon.agent_token=fw_cfg", "cocoon.debug_console=0"}},
		{name: "without a token", wantTail: []string{"cocoon.agent_token=none", "cocoon.debug_console=0"}},
		{name: "debug console", tokenFile: "/run/x/agent-token", console: true, wantTail: []string{"cocoon.agent_token=fw_cfg", "cocoon.debug_console=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := commandLine(spec, "tcg", nil, 0, tc.tokenFile, tc.console)
			joined := strings.Join(args, " ")
			if !strings.Contains(joined, "-sandbox "+sandboxArg) {
				t.Errorf("no seccomp sandbox in %q", joined)
			}
			i := slices.Index(args, "-append")
			fields := strings.Fields(args[i+1])
			if tail := fields[len(fields)-2:]; !slices.Equal(tail, tc.wantTail) {
				t.Errorf("kernel command line ends with %q, want the agent policy %q", tail, tc.wantTail)
			}
			if !slices.Contains(fields, "cocoon.log=debug") {
				t.Errorf("configured kernel args lost: %q", fields)
			}
			fwcfg := slices.Contains(args, "name="+agentapi.FwCfgTokenName+",file="+tc.tokenFile)
			if fwcfg != (tc.tokenFile != "") {
				t.Errorf("fw_cfg token item present = %v in %q", fwcfg, joined)
			}
		})
	}
}

// procStatus reads the named fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int, keys ...string) map[string]string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && slices.Contains(keys, k) {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// TestQEMUIsConfinedAndItsAgentWantsTheToken boots a VM and checks that QEMU
// runs without capabilities, under seccomp and no_new_privs, that the token
// is on no command line and in a 0600 file, and that the agent refuses a
// client without it, then serves cocoond and, after adoption, a new cocoond.
func TestQEMUIsConfinedAndItsAgentWantsTheToken(t *testing.T) {
	m := testGuest(t)
	ctx := context.Background()
	spec := testSpec(t, m, "confined")
	d := quietDriver()
	v, err := d.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(ctx)
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := v.State().Pid
	// setpriv execs QEMU in place: the recorded pid and start time are QEMU's.
	if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err != nil || !strings.Contains(exe, "qemu-system") {
		t.Fatalf("recorded pid %d runs %q (%v), want QEMU", pid, exe, err)
	}
	if st := v.State(); !(vm.Process{Pid: st.Pid, StartTime: st.StartTime}).Alive() {
		t.Fatalf("recorded QEMU %+v is not alive by its start time", st)
	}
	st := procStatus(t, pid, "Name", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
	want := map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000",
		"CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
	for k, w := range want {
		if st[k] != w {
			t.Errorf("qemu (pid %d, %s) %s = %q, want %q", pid, st["Name"], k, st[k], w)
		}
	}

	tokenFile := filepath.Join(spec.RunDir, vm.AgentTokenFile)
	fi, err := os.Stat(tokenFile)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != agentapi.TokenSize {
		t.Fatalf("token file: %v, %v", fi, err)
	}
	token, _ := os.ReadFile(tokenFile)
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if strings.Contains(string(cmdline), string(token)) {
		t.Fatal("the token is on QEMU's command line")
	}

	// A host user who reaches the channel without the token gets nothing.
	dctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	conn, err := v.DialAgent(dctx)
	if err != nil {
		t.Fatal(err)
	}
	intruder := agentapi.NewHealthClient(ttrpc.NewClient(conn.(*agentclient.TokenConn).Conn))
	for {
		_, err = intruder.Check(dctx, &agentapi.CheckRequest{})
		if status.Code(err) == codes.Unauthenticated || dctx.Err() != nil {
			break
		}
		time.Sleep(time.Second) // the guest is still booting
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("check without the token: %v, want Unauthenticated", err)
	}
	conn.Close()

	client, _ := agentClient(t, v)
	client.Close()
	state := v.State()
	v.(*qemuVM).qmp.Close() // as a cocoond restart would
	v.(*qemuVM).Detach()
	adopted, err := quietDriver().Adopt(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	defer adopted.Stop(ctx)
	c2, _ := agentClient(t, adopted)
	c2.Close()
}
