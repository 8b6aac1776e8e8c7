package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"go.podman.io/storage"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/cni"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/vm"
)

// network attaches pods to the cluster network (cni/).
type network interface {
	Attach(ctx context.Context, req PodNetworkRequest) (*PodNetwork, error)
	// Detach undoes Attach from the netns path alone (it works after a restart)
	// and is idempotent.
	Detach(ctx context.Context, podID, netnsPath string) error
	// Attached lists what is attached, pod ID to netns path, so a restart
	// can detach what no pod record claims.
	Attached() (map[string]string, error)
	// Stats reads the pod's interface counters in its netns.
	Stats(netnsPath string) (*cni.InterfaceStats, error)
}

// images is what containers need from the image service.
type images interface {
	Status(ctx context.Context, ref string) (*image.Image, error)
	Store() storage.Store
}

// BootObserver learns how each pod VM boot went (metrics/ implements it):
// d runs from starting the VMM to a healthy agent, or to the failure.
type BootObserver interface {
	ObserveBoot(handler, vmm string, d time.Duration, err error)
}

// Options wire a Manager.
type Options struct {
	StateDir string // persisted records: <StateDir>/pods, <StateDir>/containers
	RunDir   string // per-pod runtime dirs: <RunDir>/<pod id>
	// VMDir holds each VM's sockets under a short name (<VMDir>/<16 hex of the
	// pod id>): unix socket paths must fit in 108 bytes.
	VMDir   string
	Runtime config.Runtime
	Drivers map[string]vm.Driver
	Network network
	// Cgroups places pods' host processes in kubelet's pod cgroups; nil
	// leaves them in cocoond's cgroup (tests without root).
	Cgroups podCgroups
	Images  images
	Log     *logrus.Entry
	// Boot and AgentCalls are told about VM boots and agent calls; nil is fine.
	Boot       BootObserver
	AgentCalls agentclient.CallObserver
}

// Manager runs pods in VMs and containers in pods.
type Manager struct {
	opts       Options
	pods       *store[Pod]
	containers *store[Container]
	podNames   *registrar
	ctrNames   *registrar

	locks podLocks // one per pod: its operations run one at a time

	mu   sync.Mutex
	live map[string]*podRuntime // running pods' VM and agent connection
	// pools are the handlers' warm pools (pool.go), set by StartPools.
	pools map[string]*pool
	// refillDelay overrides the pools' defaultRefillDelay (tests).
	refillDelay time.Duration

	podCIDR func() string
	cpu     cpuSamples
	events  events
}

// podRuntime is what a running pod holds besides its record.
type podRuntime struct {
	vmm    vm.VMM
	client *ttrpc.Client
	conn   net.Conn // the client's connection (Detach half-closes it)
	agent  agentapi.AgentClient

	mu      sync.Mutex
	outputs map[string]*output // container id → its log writer

	life lifetime // ends when the pod stops or its VM dies
}

// New loads the persisted pods and containers.
func New(opts Options, podCIDR func() string) (*Manager, error) {
	m := &Manager{
		opts:       opts,
		pods:       newStore(filepath.Join(opts.StateDir, "pods"), storeHooks[Pod]{prepare: decodePod, check: checkPod}),
		containers: newStore(filepath.Join(opts.StateDir, "containers"), storeHooks[Container]{prepare: decodeContainer, check: checkContainer}),
		podNames:   newRegistrar(),
		ctrNames:   newRegistrar(),
		live:       map[string]*podRuntime{},
		podCIDR:    podCIDR,
	}
	if m.podCIDR == nil {
		m.podCIDR = func() string { return "" }
	}
	for _, s := range []interface {
		load(*logrus.Entry) error
	}{m.pods, m.containers} {
		if err := s.load(opts.Log); err != nil {
			return nil, err
		}
	}
	for _, p := range m.pods.list() {
		_ = m.podNames.reserve(p.Name, p.ID)
	}
	for _, c := range m.containers.list() {
		_ = m.ctrNames.reserve(c.Name, c.ID)
	}
	return m, nil
}

func (m *Manager) observeBoot(handler, vmm string, start time.Time, err error) {
	if m.opts.Boot != nil {
		m.opts.Boot.ObserveBoot(handler, vmm, time.Since(start), err)
	}
}

// waitAgent connects to a pod VM's agent with the client every pod uses.
func (m *Manager) waitAgent(ctx context.Context, v vm.VMM) (*ttrpc.Client, error) {
	c, _, err := m.dialAgent(ctx, v)
	return c, err
}

// dialAgent is waitAgent that also returns the client's connection, which
// Detach half-closes.
func (m *Manager) dialAgent(ctx context.Context, v vm.VMM) (*ttrpc.Client, net.Conn, error) {
	return connectAgent(ctx, v, agentclient.Wait, agentclient.ObserveCalls(m.opts.AgentCalls))
}

// reconnectAgent connects to the agent of a VM re-adopted after a restart,
// returning the client's connection too.
func (m *Manager) reconnectAgent(ctx context.Context, v vm.VMM) (*ttrpc.Client, net.Conn, error) {
	return connectAgent(ctx, v, agentclient.Reconnect, agentclient.ObserveCalls(m.opts.AgentCalls))
}

// connectAgent connects with connect (agentclient.Wait or Reconnect) and
// returns the connection the client got, the last one dialled.
func connectAgent(ctx context.Context, v vm.VMM, connect func(context.Context, agentclient.Dialer, ...ttrpc.ClientOpts) (*ttrpc.Client, error), opts ...ttrpc.ClientOpts) (*ttrpc.Client, net.Conn, error) {
	var mu sync.Mutex
	var last net.Conn
	dial := func(ctx context.Context) (net.Conn, error) {
		c, err := v.DialAgent(ctx)
		if err == nil {
			mu.Lock()
			last = c
			mu.Unlock()
		}
		return c, err
	}
	c, err := connect(ctx, dial, opts...)
	mu.Lock()
	defer mu.Unlock()
	return c, last, err
}

func newID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (m *Manager) runtime(podID string) (*podRuntime, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rt, ok := m.live[podID]
	if !ok {
		return nil, fmt.Errorf("%w: pod %s is not running", errdefs.ErrFailedPrecondition, podID)
	}
	return rt, nil
}

// Pod returns a pod by ID or unique ID prefix.
func (m *Manager) Pod(id string) (Pod, error) {
	full, err := m.pods.resolve(id)
	if err != nil {
		return Pod{}, err
	}
	p, ok := m.pods.get(full)
	if !ok {
		return Pod{}, fmt.Errorf("%w: pod %s", errdefs.ErrNotFound, id)
	}
	return p, nil
}

// Pods lists every pod.
func (m *Manager) Pods() []Pod { return m.pods.list() }

// Container returns a container by ID or unique ID prefix.
func (m *Manager) Container(id string) (Container, error) {
	full, err := m.containers.resolve(id)
	if err != nil {
		return Container{}, err
	}
	c, ok := m.containers.get(full)
	if !ok {
		return Container{}, fmt.Errorf("%w: container %s", errdefs.ErrNotFound, id)
	}
	return c, nil
}

// Containers lists every container, but not those still being created
// (their records exist only so a crash cannot leak what they name).
func (m *Manager) Containers() []Container {
	all := m.containers.list()
	out := all[:0]
	for _, c := range all {
		if c.State != StateCreating {
			out = append(out, c)
		}
	}
	return out
}

func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
	}
	return nil
}
