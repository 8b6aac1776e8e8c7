package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/vm/guest"
)

const (
	shareTag, shareMount = "cocoon-share", "/run/cocoon/shared"
	guestMAC             = "52:54:00:c0:c0:01"
)

// guestVM is a QEMU/TCG VM running our guest, its agent on a virtio-serial port.
type guestVM struct {
	cmd     *exec.Cmd
	dir     string
	sock    string
	client  *ttrpc.Client
	agent   agentapi.AgentClient
	health  agentapi.HealthService
	exited  chan struct{} // closed when QEMU has exited; waitErr holds why
	waitErr error
	healthy time.Duration // from QEMU start to the first SERVING answer
}

func guestDir(t testing.TB) string {
	t.Helper()
	if os.Getenv("COCOON_INTEGRATION") == "" || os.Geteuid() != 0 {
		t.Skip("skipping: needs root and COCOON_INTEGRATION (make test-integration)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipping: qemu-system-x86_64 not installed (make deps)")
	}
	dir := os.Getenv("COCOON_GUEST_DIR")
	if dir == "" {
		t.Skip("skipping: COCOON_GUEST_DIR not set (make test-integration builds the guest)")
	}
	if _, err := guest.Locate(dir); err != nil {
		t.Fatalf("guest: %v", err)
	}
	return dir
}

// bootGuest starts QEMU with the share dir on virtio-fs and waits for the agent's health check.
func bootGuest(t testing.TB, share string) *guestVM {
	return bootGuestLogging(t, share, "debug")
}

// bootGuestLogging is bootGuest with the agent logging at level.
func bootGuestLogging(t testing.TB, share, level string) *guestVM {
	gdir := guestDir(t)
	m, err := guest.Locate(gdir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	vfsSock := filepath.Join(dir, "virtiofs.sock")
	vm := &guestVM{dir: dir, exited: make(chan struct{})}

	// Debian's cloud kernel has no 9p: the share is virtio-fs, served by virtiofsd.
	vfs := exec.Command("/usr/lib/qemu/virtiofsd", "--socket-path="+vfsSock, "-o", "source="+share, "-o", "cache=auto", "-o", "sandbox=chroot")
	vfs.Stdout, vfs.Stderr = io.Discard, io.Discard
	vfs.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := vfs.Start(); err != nil {
		t.Skipf("skipping: virtiofsd: %v", err)
	}
	t.Cleanup(func() { _ = vfs.Process.Kill(); _ = vfs.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(vfsSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("virtiofsd did not create its socket")
		}
	}

	vm.cmd = exec.Command("qemu-system-x86_64",
		"-machine", "q35,memory-backend=mem", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
		"-object", "memory-backend-memfd,id=mem,size=512M,share=on",
		"-nodefaults", "-nographic", "-no-reboot",
		"-kernel", m.KernelPath(), "-initrd", m.InitramfsPath(),
		"-append", "console=ttyS0 panic=-1 cocoon.log="+level,
		"-serial", "file:"+filepath.Join(dir, "console.log"),
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=cocoon.agent",
		// A NIC on an unconnected hub: the agent configures it, nothing leaves the VM.
		"-netdev", "hubport,id=n0,hubid=0", "-device", "virtio-net-pci,netdev=n0,mac="+guestMAC,
		"-chardev", "socket,id=vfs,path="+vfsSock,
		"-device", "vhost-user-fs-pci,chardev=vfs,tag="+shareTag,
	)
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { vm.waitErr = vm.cmd.Wait(); close(vm.exited) }()
	t.Cleanup(func() {
		if vm.client != nil {
			vm.client.Close()
		}
		_ = vm.cmd.Process.Kill()
		<-vm.exited
		if t.Failed() {
			console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
			t.Logf("guest console:\n%s", console)
		}
	})

	vm.sock = sock
	vm.connect(t, 90*time.Second)
	vm.healthy = time.Since(start)
	return vm
}

// connect dials the agent's serial port and waits for a SERVING health check.
func (vm *guestVM) connect(t testing.TB, wait time.Duration) {
	t.Helper()
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err = net.Dial("unix", vm.sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU agent socket: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	vm.client = ttrpc.NewClient(conn)
	vm.agent = agentapi.NewAgentClient(vm.client)
	vm.health = agentapi.NewHealthClient(vm.client)
	for deadline := time.Now().Add(wait); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := vm.health.Check(ctx, &agentapi.CheckRequest{})
		cancel()
		if err == nil && resp.Status == agentapi.CheckResponse_SERVING {
			break
		}
		select {
		case <-vm.exited:
			t.Fatalf("QEMU exited before the agent answered: %v", vm.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not healthy after %v: %v", wait, err)
		}
	}
}

// busyboxRootfs writes a rootfs with Debian's static busybox and its applets.
func busyboxRootfs(t testing.TB, dir string) {
	t.Helper()
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("skipping: /bin/busybox missing (make deps installs busybox-static)")
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "echo", "sleep", "cat", "dd", "hostname", "ls", "id", "true", "stty", "ip"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
}

// containerSpec is a runc-style default spec for a container in the pod VM.
func containerSpec(id string, args ...string) []byte {
	s := specconv.Example()
	s.Root = &specs.Root{Path: filepath.Join(shareMount, id, "rootfs")}
	s.Process.Terminal = false
	s.Process.Args = args
	s.Linux.CgroupsPath = "/cocoon/" + id
	// Containers share the VM's network and UTS namespaces, like a pod's containers.
	s.Hostname = ""
	var ns []specs.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		if n.Type != specs.NetworkNamespace && n.Type != specs.UTSNamespace {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
	b, _ := json.Marshal(s)
	return b
}

func readAll(t *testing.T, a agentapi.AgentClient, cid, eid string, which agentapi.ReadOutputRequest_Stream) <-chan string {
	out := make(chan string, 1)
	stream, err := a.ReadOutput(context.Background(), &agentapi.ReadOutputRequest{ContainerId: cid, ExecId: eid, Stream: which})
	if err != nil {
		t.Fatalf("ReadOutput: %v", err)
	}
	go func() {
		var sb strings.Builder
		for {
			chunk, err := stream.Recv()
			if err != nil {
				if err != io.EOF {
					sb.WriteString(fmt.Sprintf("<read error: %v>", err))
				}
				out <- sb.String()
				return
			}
			sb.Write(chunk.Data)
		}
	}()
	return out
}

func TestGuestAgentRunsContainers(t *testing.T) {
	share := t.TempDir()
	for _, id := range []string{"c1", "hog"} {
		busyboxRootfs(t, filepath.Join(share, id, "rootfs"))
	}
	vm := bootGuest(t, share)
	t.Logf("QEMU start to healthy agent: %v", vm.healthy)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := vm.agent

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := a.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{
		SandboxId: "pod1", Hostname: "pod-one",
		ResolvConf: "nameserver 10.10.10.10\n",
		Shares:     []*agentapi.Share{{Kind: agentapi.Share_VIRTIOFS, Tag: shareTag, MountPoint: shareMount}},
	})
	must("CreateSandbox", err)
	details, err := a.OnlineCPUMem(ctx, &emptypb.Empty{}) // no hotplug: it only describes the guest
	must("OnlineCPUMem", err)
	t.Logf("guest: kernel %s, %d cpus, %d MiB, agent RSS %d KiB", details.KernelRelease, details.OnlineCpus, details.MemoryBytes>>20, details.AgentRssBytes>>10)

	// A container whose output is read before and after it starts.
	_, err = a.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "c1", OciSpec: containerSpec("c1", "sh", "-c", "echo hello from $(hostname); echo to-stderr >&2; exec sleep 1000")})
	must("CreateContainer", err)
	stdout := readAll(t, a, "c1", "", agentapi.ReadOutputRequest_STDOUT)
	stderr := readAll(t, a, "c1", "", agentapi.ReadOutputRequest_STDERR)
	_, err = a.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: "c1"})
	must("StartContainer", err)

	// Exec into it and stream the exec's output.
	proc, _ := json.Marshal(specs.Process{Args: []string{"sh", "-c", "echo exec-out; ls /; exit 3"}, Cwd: "/", Env: []string{"PATH=/bin"}})
	_, err = a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: proc})
	must("ExecProcess", err)
	execOut := readAll(t, a, "c1", "e1", agentapi.ReadOutputRequest_STDOUT)
	res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ContainerId: "c1", ExecId: "e1"})
	must("WaitProcess exec", err)
	if got := <-execOut; res.ExitCode != 3 || !strings.Contains(got, "exec-out") || !strings.Contains(got, "proc") {
		t.Fatalf("exec: exit %d output %q", res.ExitCode, got)
	}

	// Exec with stdin on a pipe: what the host writes comes back, EOF ends it.
	runExec(t, ctx, a, "e2", false, []string{"cat"}, []string{"ping\n"}, nil, 0, "ping\n")
	// Exec on a terminal, resized before use.
	runExec(t, ctx, a, "e3", true, []string{"sh"}, []string{"stty size; echo tty-$((1+1)); exit 5\n"},
		&agentapi.ResizeTtyRequest{Rows: 30, Columns: 100}, 5, "30 100")

	// The guest NIC takes the address and routes the host sends; containers see them.
	iface, err := a.UpdateInterface(ctx, &agentapi.Interface{HwAddr: guestMAC, Name: "eth0", Mtu: 1400,
		Addresses: []*agentapi.IPAddress{{Address: "10.99.0.5/24"}}})
	must("UpdateInterface", err)
	if iface.Name != "eth0" || iface.Mtu != 1400 || len(iface.Addresses) != 1 {
		t.Fatalf("interface %+v", iface)
	}
	_, err = a.UpdateRoutes(ctx, &agentapi.Routes{Routes: []*agentapi.Route{{Destination: "default", Gateway: "10.99.0.1", Device: "eth0"}}})
	must("UpdateRoutes", err)
	runExec(t, ctx, a, "e4", false, []string{"ip", "route"}, nil, nil, 0, "default via 10.99.0.1 dev eth0")

	// cocoond restarting drops the serial connection; the agent serves the next one.
	vm.client.Close()
	vm.connect(t, 30*time.Second)
	a = vm.agent

	stats, err := a.StatsContainer(ctx, &agentapi.ContainerRequest{ContainerId: "c1"})
	must("StatsContainer", err)
	if stats.CpuUsageNs == 0 || stats.MemoryUsageBytes == 0 || stats.PidsCurrent == 0 {
		t.Fatalf("stats: %+v", stats)
	}

	_, err = a.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: "c1", Signal: uint32(syscall.SIGKILL)})
	must("SignalProcess", err)
	res, err = a.WaitProcess(ctx, &agentapi.ProcessRequest{ContainerId: "c1"})
	must("WaitProcess", err)
	if res.ExitCode != 137 || res.Reason != "" {
		t.Fatalf("killed container: exit %d reason %q", res.ExitCode, res.Reason)
	}
	if got := <-stdout; !strings.Contains(got, "hello from pod-one") {
		t.Fatalf("stdout %q", got)
	}
	if got := <-stderr; !strings.Contains(got, "to-stderr") {
		t.Fatalf("stderr %q", got)
	}
	_, err = a.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: "c1"})
	must("RemoveContainer", err)

	// A 15 MiB limit ends a memory hog with 137 and OOMKilled.
	var hog specs.Spec
	_ = json.Unmarshal(containerSpec("hog", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"), &hog)
	limit := int64(15 << 20)
	hog.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	hogSpec, _ := json.Marshal(hog)
	_, err = a.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "hog", OciSpec: hogSpec})
	must("CreateContainer hog", err)
	_, err = a.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: "hog"})
	must("StartContainer hog", err)
	res, err = a.WaitProcess(ctx, &agentapi.ProcessRequest{ContainerId: "hog"})
	must("WaitProcess hog", err)
	if res.ExitCode != 137 || res.Reason != "OOMKilled" {
		t.Fatalf("memory hog: exit %d reason %q", res.ExitCode, res.Reason)
	}

	// DestroySandbox removes what is left and powers the VM off.
	_, err = a.DestroySandbox(ctx, &agentapi.DestroySandboxRequest{SandboxId: "pod1"})
	must("DestroySandbox", err)
	select {
	case <-vm.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("VM still running 30s after DestroySandbox")
	}
}

// runExec runs an exec in c1, writes input to its stdin, closes it and checks
// the exit code and that the output contains want.
func runExec(t *testing.T, ctx context.Context, a agentapi.AgentClient, id string, tty bool, args, input []string, resize *agentapi.ResizeTtyRequest, wantCode int32, want string) {
	t.Helper()
	proc, _ := json.Marshal(specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin", "TERM=xterm"}, Terminal: tty})
	if _, err := a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: "c1", ExecId: id, Process: proc, Tty: tty, Stdin: input != nil}); err != nil {
		t.Fatalf("exec %s: %v", id, err)
	}
	out := readAll(t, a, "c1", id, agentapi.ReadOutputRequest_STDOUT)
	if resize != nil {
		resize.ContainerId, resize.ExecId = "c1", id
		if _, err := a.ResizeTty(ctx, resize); err != nil {
			t.Fatalf("resize %s: %v", id, err)
		}
	}
	for _, in := range input {
		if _, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{ContainerId: "c1", ExecId: id, Data: []byte(in)}); err != nil {
			t.Fatalf("stdin %s: %v", id, err)
		}
	}
	if input != nil && !tty {
		if _, err := a.CloseStdin(ctx, &agentapi.ProcessRequest{ContainerId: "c1", ExecId: id}); err != nil {
			t.Fatalf("close stdin %s: %v", id, err)
		}
	}
	res, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ContainerId: "c1", ExecId: id})
	if err != nil {
		t.Fatalf("wait %s: %v", id, err)
	}
	if got := <-out; res.ExitCode != wantCode || !strings.Contains(got, want) {
		t.Fatalf("exec %s: exit %d, output %q (want %d and %q)", id, res.ExitCode, got, wantCode, want)
	}
}
