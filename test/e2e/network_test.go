package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/cni"
	"github.com/cocoon-runtime/cocoon/cni/cnitest"
	"github.com/cocoon-runtime/cocoon/sandbox"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/guest"
	"github.com/cocoon-runtime/cocoon/vm/qemu"
)

// A bridge and subnet of this test's own, apart from the cni package's
// (cocoon-t0, 10.199.0.0/24) so both may run at once.
const (
	netBridge = "cocoon-t1"
	netSubnet = "10.199.1.0/24"
	netName   = "cocoon-e2e"
)

// netEnv is a CNI network on the Debian plugins plus what boots pod VMs.
type netEnv struct {
	guest   *guest.Manifest
	driver  *qemu.Driver
	dataDir string
	cni     *cni.Manager
	// addTook and tapTook are per pod: CNI ADD, and tap + tc.
	addTook, tapTook []time.Duration
}

// netPod is one pod: its netns, network, tap and VM running busybox httpd.
type netPod struct {
	id     string
	name   string
	ns     *cni.Netns
	res    *cni.Result
	tap    *cni.Tap
	vm     vm.VMM
	pids   []int
	client *ttrpc.Client
	agent  agentapi.AgentClient
}

func newNetEnv(t *testing.T) *netEnv {
	m, err := guest.Locate(guestDir(t))
	if err != nil {
		t.Fatal(err)
	}
	cnitest.Require(t)
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("skipping: /bin/busybox missing (make deps installs busybox-static)")
	}
	e := &netEnv{guest: m, dataDir: t.TempDir()}
	e.cni = e.manager(t, cnitest.Conflist(netName, netBridge, netSubnet, e.dataDir, cnitest.PortmapAndLoopback))
	cnitest.RestoreHost(t, netBridge)
	// Our netns files go under the default root; remove the directories
	// too if this test made them.
	for _, d := range []string{filepath.Dir(cni.DefaultNetnsRoot), cni.DefaultNetnsRoot} {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			t.Cleanup(func() { _ = os.Remove(d) })
		}
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e.driver = qemu.New(qemu.Options{Log: logrus.NewEntry(log)})
	return e
}

// manager returns a CNI manager on a conflist of its own.
func (e *netEnv) manager(t *testing.T, conflist string) *cni.Manager {
	confDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "10-e2e.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return cni.NewManager(cni.Options{ConfDir: confDir, BinDirs: []string{cnitest.PluginDir}, StateDir: t.TempDir(), Log: logrus.NewEntry(log)})
}

// startPod attaches a pod to the network, boots its VM on the tap,
// configures the guest NIC through the agent and starts httpd serving
// "hello from <name>".
func (e *netEnv) startPod(t *testing.T, name string, ports []cni.PortMapping) *netPod {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := &netPod{id: fmt.Sprintf("cocoon-e2e-%d-%s", os.Getpid(), name), name: name}
	var err error
	if p.ns, err = cni.NewNetns("", p.id); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(t, e) }) // idempotent: the test stops pods itself

	start := time.Now()
	p.res, err = e.cni.Setup(ctx, cni.PodNetwork{ID: p.id, Name: name, Namespace: "e2e", UID: "uid-" + name, NetnsPath: p.ns.Path(), PortMappings: ports})
	if err != nil {
		t.Fatal(err)
	}
	e.addTook = append(e.addTook, time.Since(start))
	start = time.Now()
	if p.tap, err = cni.SetupTap(p.ns.Path(), p.res.Interface); err != nil {
		t.Fatal(err)
	}
	e.tapTook = append(e.tapTook, time.Since(start))

	share := t.TempDir()
	rootfs := filepath.Join(share, "web", "rootfs")
	busyboxRootfs(t, rootfs)
	for _, applet := range []string{"httpd", "wget", "ping"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "www", "index.html"), []byte("hello from "+name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	spec := &vm.Spec{
		ID: p.id, RunDir: filepath.Join(t.TempDir(), "run"),
		Kernel: e.guest.KernelPath(), Initramfs: e.guest.InitramfsPath(),
		VCPUs: 1, MemoryMiB: 256, Accel: "tcg",
		Shares: []vm.Share{{Tag: shareTag, Source: share}},
		NICs:   []vm.NIC{{ID: "net0", Tap: p.tap.File, MAC: p.tap.MAC, MTU: p.tap.MTU}},
	}
	if p.vm, err = e.driver.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	p.pids = []int{p.vm.State().Pid}
	for _, h := range p.vm.State().Helpers {
		p.pids = append(p.pids, h.Pid)
	}
	if err := p.vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if p.client, err = agentclient.Wait(ctx, p.vm.DialAgent); err != nil {
		t.Fatal(err)
	}
	p.agent = agentapi.NewAgentClient(p.client)

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s %s: %v", p.id, what, err)
		}
	}
	_, err = p.agent.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: p.id, Hostname: name,
		Shares: []*agentapi.Share{{Kind: agentapi.Share_VIRTIOFS, Tag: shareTag, MountPoint: shareMount}}})
	must("CreateSandbox", err)
	wantIface, wantRoutes := sandbox.AgentNetwork(p.res.Guest())
	iface, err := p.agent.UpdateInterface(ctx, wantIface)
	must("UpdateInterface", err)
	if len(iface.Addresses) == 0 || iface.Name != "eth0" || int(iface.Mtu) != p.res.MTU {
		t.Fatalf("guest interface %+v", iface)
	}
	_, err = p.agent.UpdateRoutes(ctx, wantRoutes)
	must("UpdateRoutes", err)

	// ping needs CAP_NET_RAW; execs inherit the container's capabilities.
	var s specs.Spec
	_ = json.Unmarshal(containerSpec("web", "httpd", "-f", "-p", "80", "-h", "/www"), &s)
	c := s.Process.Capabilities
	c.Bounding, c.Effective, c.Permitted = append(c.Bounding, "CAP_NET_RAW"), append(c.Effective, "CAP_NET_RAW"), append(c.Permitted, "CAP_NET_RAW")
	ociSpec, _ := json.Marshal(s)
	_, err = p.agent.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "web", OciSpec: ociSpec})
	must("CreateContainer", err)
	_, err = p.agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: "web"})
	must("StartContainer", err)
	return p
}

// ip is the pod's IPv4 address.
func (p *netPod) ip() string { return p.res.IPs[0].Addr().String() }

// exec runs args in the pod's web container and returns exit code and
// output (stdout, then stderr).
func (p *netPod) exec(t *testing.T, id string, args ...string) (int32, string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	proc, _ := json.Marshal(specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}})
	if _, err := p.agent.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: "web", ExecId: id, Process: proc}); err != nil {
		t.Fatalf("exec %v: %v", args, err)
	}
	out := readAll(t, p.agent, "web", id, agentapi.ReadOutputRequest_STDOUT)
	errOut := readAll(t, p.agent, "web", id, agentapi.ReadOutputRequest_STDERR)
	res, err := p.agent.WaitProcess(ctx, &agentapi.ProcessRequest{ContainerId: "web", ExecId: id})
	if err != nil {
		t.Fatalf("wait %v: %v", args, err)
	}
	return res.ExitCode, <-out + <-errOut
}

// stop tears the pod down in the order the sandbox code will: VM, tap and
// filters, CNI DEL, netns. Every step is idempotent.
func (p *netPod) stop(t *testing.T, e *netEnv) {
	if p.client != nil {
		p.client.Close()
		p.client = nil
	}
	if p.vm != nil {
		if err := p.vm.Stop(context.Background()); err != nil {
			t.Errorf("%s: stop VM: %v", p.id, err)
		}
	}
	if err := cni.TeardownTap(p.ns.Path()); err != nil {
		t.Errorf("%s: %v", p.id, err)
	}
	if p.tap != nil {
		p.tap.File.Close()
	}
	if err := e.cni.Teardown(context.Background(), p.id); err != nil {
		t.Errorf("%s: %v", p.id, err)
	}
	if err := p.ns.Remove(); err != nil {
		t.Errorf("%s: %v", p.id, err)
	}
}

// httpGet fetches url, retrying while the guest's httpd comes up.
func httpGet(t *testing.T, url string, wait time.Duration) (string, error) {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second}
	var err error
	for deadline := time.Now().Add(wait); ; time.Sleep(200 * time.Millisecond) {
		var resp *http.Response
		if resp, err = client.Get(url); err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(body), nil
			}
			err = errors.Join(rerr, fmt.Errorf("HTTP %d", resp.StatusCode))
		}
		if time.Now().After(deadline) {
			return "", err
		}
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestNetworkPodsOnCNI(t *testing.T) {
	e := newNetEnv(t)
	hostPort := freePort(t)
	a := e.startPod(t, "a", []cni.PortMapping{{HostPort: int32(hostPort), ContainerPort: 80, Protocol: "TCP"}})
	b := e.startPod(t, "b", nil)
	t.Logf("pods: a %s (MAC %s, MTU %d), b %s; host port %d", a.ip(), a.res.MAC, a.res.MTU, b.ip(), hostPort)

	// The host reaches each pod's IP on the bridge.
	for _, p := range []*netPod{a, b} {
		body, err := httpGet(t, "http://"+p.ip()+"/", 90*time.Second)
		if err != nil || !strings.Contains(body, "hello from "+p.name) {
			t.Fatalf("GET pod %s: %q, %v", p.ip(), body, err)
		}
	}
	// The port mapping, through the bridge's IP and through localhost.
	// portmap 1.1.1 DNATs 127.0.0.1 too: it marks that traffic for
	// masquerade and sets route_localnet on the bridge, so 127.0.0.1 can
	// leave through it.
	gw := a.res.Gateways[0].String()
	for _, host := range []string{gw, "127.0.0.1"} {
		url := "http://" + net.JoinHostPort(host, strconv.Itoa(hostPort)) + "/"
		if body, err := httpGet(t, url, 10*time.Second); err != nil || !strings.Contains(body, "hello from a") {
			t.Fatalf("GET %s: %q, %v", url, body, err)
		}
	}
	localnet, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + netBridge + "/route_localnet")
	t.Logf("hostPort %d reached via %s and 127.0.0.1 (route_localnet on %s: %s)", hostPort, gw, netBridge, strings.TrimSpace(string(localnet)))

	// Pod to pod, in both directions, from inside the containers.
	// (No wget -T: Debian's busybox 1.35 wget segfaults on it.)
	if code, out := b.exec(t, "wget-a", "wget", "-q", "-O", "-", "http://"+a.ip()+"/"); code != 0 || !strings.Contains(out, "hello from a") {
		t.Fatalf("b → a wget: exit %d, %q", code, out)
	}
	if code, out := a.exec(t, "wget-b", "wget", "-q", "-O", "-", "http://"+b.ip()+"/"); code != 0 || !strings.Contains(out, "hello from b") {
		t.Fatalf("a → b wget: exit %d, %q", code, out)
	}
	if code, out := a.exec(t, "ping-b", "ping", "-c", "2", "-W", "5", b.ip()); code != 0 || !strings.Contains(out, "2 packets received") {
		t.Fatalf("a → b ping: exit %d, %q", code, out)
	}

	// A setup that fails half-way (tuning fails after bridge + host-local)
	// leaves nothing either; it counts in the leak check below.
	failing := e.manager(t, cnitest.Conflist(netName, netBridge, netSubnet, e.dataDir,
		`{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.cocoon_no_such_knob":"1"}}`))
	fns, err := cni.NewNetns("", fmt.Sprintf("cocoon-e2e-%d-fail", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := failing.Setup(context.Background(), cni.PodNetwork{ID: "fail", Name: "fail", Namespace: "e2e", NetnsPath: fns.Path()}); err == nil {
		t.Fatal("setup with a failing plugin succeeded")
	} else {
		t.Logf("failed setup, as wanted: %v", err)
	}
	if err := fns.Remove(); err != nil {
		t.Fatal(err)
	}

	t.Logf("CNI ADD per pod: median %v (%v); tap + tc per pod: median %v (%v)",
		median(e.addTook), e.addTook, median(e.tapTook), e.tapTook)

	// Teardown, checking the netns is clean before it goes.
	for _, p := range []*netPod{a, b} {
		p.client.Close()
		p.client = nil
		if err := p.vm.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := cni.TeardownTap(p.ns.Path()); err != nil {
			t.Fatal(err)
		}
		if left := tcLeft(t, p.ns); left != "" {
			t.Fatalf("%s: left in the netns: %s", p.id, left)
		}
		p.stop(t, e)
	}
	e.assertNoLeaks(t, []*netPod{a, b}, fns.Path())
}

// tcLeft describes any tap, ingress qdisc or filter left in the netns.
func tcLeft(t *testing.T, ns *cni.Netns) string {
	var left []string
	err := ns.Do(func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().Name == cni.TapName {
				left = append(left, "tap "+l.Attrs().Name)
			}
			qs, _ := netlink.QdiscList(l)
			for _, q := range qs {
				if q.Type() == "ingress" {
					left = append(left, "ingress qdisc on "+l.Attrs().Name)
				}
			}
			fs, _ := netlink.FilterList(l, netlink.MakeHandle(0xffff, 0))
			if len(fs) > 0 {
				left = append(left, fmt.Sprintf("%d filters on %s", len(fs), l.Attrs().Name))
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(left, ", ")
}

func (e *netEnv) assertNoLeaks(t *testing.T, pods []*netPod, extraNetns ...string) {
	t.Helper()
	for _, p := range pods {
		extraNetns = append(extraNetns, p.ns.Path())
		for _, pid := range p.pids {
			if unix.Kill(pid, 0) == nil {
				stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
				if !strings.Contains(string(stat), ") Z") {
					t.Errorf("%s: VM process %d still running", p.id, pid)
				}
			}
		}
		if rules := cnitest.NATRules(p.ip()); len(rules) > 0 {
			t.Errorf("%s: nat rules left: %v", p.id, rules)
		}
	}
	for _, path := range extraNetns {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("netns file %s left", path)
		}
	}
	if ports := cnitest.BridgePorts(t, netBridge); len(ports) > 0 {
		t.Errorf("veths left on %s: %v", netBridge, ports)
	}
	if ips := cnitest.Allocated(e.dataDir); len(ips) > 0 {
		t.Errorf("host-local allocations left: %v", ips)
	}
	if l, err := netlink.LinkByName(cni.TapName); err == nil {
		t.Errorf("a tap %s is in the host netns", l.Attrs().Name)
	}
}
