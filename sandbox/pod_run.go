package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/sandbox/ocispec"
	"github.com/cocoon-runtime/cocoon/vm"
	"github.com/cocoon-runtime/cocoon/vm/guest"
)

const (
	// shareTag is the virtio-fs tag of the pod's share; the agent mounts it at guestShare.
	shareTag   = "cocoon"
	guestShare = "/run/cocoon/shared"
)

// podName is the registrar key kubelet's retries reuse.
func podName(md *runtimeapi.PodSandboxMetadata) string {
	return fmt.Sprintf("%s_%s_%s_%d", md.GetName(), md.GetNamespace(), md.GetUid(), md.GetAttempt())
}

func validatePodConfig(cfg *runtimeapi.PodSandboxConfig) error {
	md := cfg.GetMetadata()
	if md.GetName() == "" || md.GetNamespace() == "" || md.GetUid() == "" {
		return fmt.Errorf("%w: pod metadata needs name, namespace and uid", errdefs.ErrInvalidArgument)
	}
	return nil
}

// RunPod boots a pod's VM on the pod network and returns the pod ID. Any
// failure undoes every step, leaving no netns, tap, VM, file or name behind.
func (m *Manager) RunPod(ctx context.Context, cfg *runtimeapi.PodSandboxConfig, handler string) (string, error) {
	if err := validatePodConfig(cfg); err != nil {
		return "", err
	}
	h, err := m.placePod(cfg, handler)
	if err != nil {
		return "", err
	}
	if handler == "" {
		handler = m.opts.Runtime.DefaultHandler
	}
	vmm := h.VMM
	host := h.Kind == config.KindHost
	if host {
		vmm = HostDriver
	}
	driver, ok := m.opts.Drivers[vmm]
	if !ok {
		return "", fmt.Errorf("%w: handler %q wants VMM %q, which is not available", errdefs.ErrFailedPrecondition, handler, vmm)
	}
	raw, err := marshalConfig(cfg)
	if err != nil {
		return "", err
	}
	// The warm pool first; an empty pool, or a claim that fails, means a
	// cold boot, never an error of its own.
	// Host pods have no VM to take from a pool.
	if w := m.takeWarmFor(host, handler); w != nil {
		id, err := m.runPod(ctx, cfg, raw, handler, h, driver, w)
		var taken *nameTakenError
		if err == nil || ctx.Err() != nil || errors.As(err, &taken) {
			return id, err
		}
		m.opts.Log.WithFields(logrus.Fields{"pod": id, "handler": handler}).WithError(err).Warn("claiming a warm VM failed: booting the pod cold")
	}
	return m.runPod(ctx, cfg, raw, handler, h, driver, nil)
}

// runPod runs a pod in w, a warm VM taken from the pool, or, with w nil, in
// a VM it boots. A failure undoes everything, w included.
func (m *Manager) runPod(ctx context.Context, cfg *runtimeapi.PodSandboxConfig, raw []byte, handler string, h config.Handler, driver vm.Driver, w *warmVM) (string, error) {
	host := h.Kind == config.KindHost
	id := newID()
	if w != nil {
		// Everything of the warm VM is named after the pod it becomes.
		id = w.id
	}
	// Nobody knows the ID yet, but a StopPodSandbox of every pod (crictl
	// rmp -a) may find the record once it is written.
	unlock, err := m.locks.lock(ctx, id)
	if err != nil {
		m.giveBack(w)
		return "", err
	}
	defer unlock()
	name := podName(cfg.GetMetadata())
	if err := m.podNames.reserve(name, id); err != nil {
		// A kubelet retry: the warm VM is still nobody's.
		m.giveBack(w)
		return "", err
	}
	pod := Pod{
		ID: id, Name: name, Config: raw, Handler: handler, Kind: h.Kind, State: StateCreating,
		CreatedAt: time.Now().UnixNano(),
		RunDir:    filepath.Join(m.opts.RunDir, id),
	}
	pod.ShareDir = filepath.Join(pod.RunDir, shareDirName)
	log := m.opts.Log.WithFields(logrus.Fields{"pod": id, "name": name})
	rt := &podRuntime{outputs: map[string]*output{}}
	var net *PodNetwork
	// The boot runs from starting the VMM to a healthy agent.
	var bootStart time.Time
	booted := false

	bootCtx, cancel := context.WithTimeout(pipeline.WithName(ctx, "run-pod"), h.BootTimeout.Std())
	defer cancel()
	// undoFailed is set when an undo fails: the record then stays, marked,
	// so a Stop/Remove or a restart finishes the cleanup.
	var undoFailed error
	tracked := func(fn func() error) func() error {
		return func() error {
			err := fn()
			if err != nil {
				undoFailed = errors.Join(undoFailed, err)
			}
			return err
		}
	}
	steps := []pipeline.Step{
		{Name: "reserve-name", Run: func(context.Context) (func() error, error) {
			return func() error { m.podNames.release(name); return nil }, nil
		}},
		{Name: "record", Run: func(context.Context) (func() error, error) {
			if err := m.pods.add(pod); err != nil {
				return nil, err
			}
			return func() error {
				if undoFailed != nil {
					_, err := m.pods.update(id, func(p *Pod) error {
						p.State, p.CleanupPending = StateNotReady, fmt.Sprintf("run failed and its undo too: %v", undoFailed)
						return nil
					})
					return err
				}
				return m.pods.remove(id)
			}, nil
		}},
		// Before the claim or the VM: its undo (removing the cgroup) must run
		// after theirs has stopped the processes in it.
		m.cgroupStep(&pod, cfg.GetLinux().GetCgroupParent(), tracked),
		{Name: "claim", Run: func(context.Context) (func() error, error) {
			// Right after the record: any later failure discards the whole
			// warm VM (VM, then network, then dirs), and a failed undo
			// leaves the record to finish it.
			rt.vmm, rt.client, rt.agent = w.vmm, w.client, agentapi.NewAgentClient(w.client)
			return tracked(func() error { return m.discardWarm(context.Background(), w) }), claimPriority(w.vmm)
		}},
		{Name: "dirs", Run: func(context.Context) (func() error, error) {
			undo := func() error { return removePodDirs(pod.RunDir, pod.ShareDir) }
			if w != nil {
				return nil, nil // the warm VM's, at the same paths; the claim undoes them
			}
			if err := mkdirs(pod.RunDir); err != nil {
				return nil, err
			}
			return undo, mountShare(pod.ShareDir, m.opts.Runtime.ShareSizeMiB)
		}},
		{Name: "network", Run: func(ctx context.Context) (func() error, error) {
			if host && hostNetwork(cfg) {
				net = &PodNetwork{} // the host's: no netns, no CNI
				return nil, nil
			}
			md := cfg.GetMetadata()
			req := PodNetworkRequest{
				PodID: id, Name: md.GetName(), Namespace: md.GetNamespace(), UID: md.GetUid(),
				PortMappings: cfg.GetPortMappings(), PodCIDR: m.podCIDR(),
				// A host pod's containers use the CNI veth itself.
				NoTap: host,
			}
			var n *PodNetwork
			var undo func() error
			if w != nil {
				// The netns is the warm VM's: the claim's undo detaches it.
				if n, err = m.attachHeld(ctx, req, w); err != nil {
					return nil, err
				}
				undo = func() error { return nil }
			} else {
				if n, err = m.opts.Network.Attach(ctx, req); err != nil {
					return nil, err
				}
				undo = tracked(func() error {
					if n.Tap != nil {
						n.Tap.Close()
					}
					return m.opts.Network.Detach(context.Background(), id, n.NetnsPath)
				})
			}
			net = n
			pod.NetnsPath, pod.IPs = n.NetnsPath, n.IPs
			if _, err := m.pods.update(id, func(p *Pod) error { p.NetnsPath, p.IPs = n.NetnsPath, n.IPs; return nil }); err != nil {
				return undo, err
			}
			return undo, nil
		}},
		// Written before the VM exists: the guest never had a chance to
		// plant anything where they go.
		{Name: "pod-files", Run: func(context.Context) (func() error, error) {
			return nil, writePodFiles(pod.ShareDir, cfg, net)
		}},
		{Name: "vm-create", Run: func(ctx context.Context) (func() error, error) {
			if host {
				bootStart = time.Now()
				v, err := driver.Create(ctx, &vm.Spec{ID: id, RunDir: m.vmRunDir(id), Netns: pod.NetnsPath})
				if err != nil {
					return nil, err
				}
				rt.vmm = v
				return tracked(func() error { return v.Stop(context.Background()) }), nil
			}
			g, err := guest.Locate(h.GuestDir)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", errdefs.ErrFailedPrecondition, err)
			}
			// kubelet sends the pod's summed limits: boot a VM that fits them
			// rather than hotplugging right after.
			vcpus, mem := fitResources(h.VCPUs, h.MemoryMiB, h, cfg.GetLinux().GetResources())
			bootStart = time.Now()
			v, err := driver.Create(ctx, &vm.Spec{
				ID: id, RunDir: m.vmRunDir(id),
				Kernel: g.KernelPath(), Initramfs: g.InitramfsPath(), KernelArgs: h.KernelArgs,
				VCPUs: vcpus, MaxVCPUs: h.MaxVCPUs, MemoryMiB: mem, MaxMemoryMiB: h.MaxMemoryMiB,
				Shares: []vm.Share{{Tag: shareTag, Source: pod.ShareDir}},
				NICs:   []vm.NIC{{ID: "eth0", Tap: net.Tap, MAC: net.MAC, MTU: net.MTU}},
				Accel:  h.Accel, BootTimeout: h.BootTimeout.Std(),
				Template: templateFor(handler, h, vcpus, mem),
			})
			if err != nil {
				return nil, err
			}
			rt.vmm = v
			return tracked(func() error { return v.Stop(context.Background()) }), nil
		}},
		{Name: "cgroup-join", Run: func(ctx context.Context) (func() error, error) {
			return nil, m.joinPodCgroup(ctx, pod.Cgroup, rt.vmm.State()) // the "cgroup" step's undo empties it
		}},
		{Name: "vm-start", Run: func(ctx context.Context) (func() error, error) {
			return nil, rt.vmm.Start(ctx)
		}},
		{Name: "agent", Run: func(ctx context.Context) (func() error, error) {
			c, conn, err := m.dialAgent(ctx, rt.vmm)
			if err != nil {
				// The VM's run dir (and its console) goes with the undo.
				if tail := vm.FileTail(vm.ConsoleLog(rt.vmm.State().RunDir), 800); tail != "" {
					err = fmt.Errorf("%w; guest console ends: %s", err, tail)
				}
				return nil, err
			}
			booted = true
			m.observeBoot(handler, h.VMM, bootStart, nil)
			rt.client, rt.conn, rt.agent = c, conn, agentapi.NewAgentClient(c)
			return c.Close, nil
		}},
		{Name: "grow", Run: func(ctx context.Context) (func() error, error) {
			// The warm VM has the handler's size; the pod's limits may want more.
			_, err := growToFit(ctx, rt, h, cfg.GetLinux().GetResources())
			return nil, err
		}},
		{Name: "guest-setup", Run: func(ctx context.Context) (func() error, error) {
			if host {
				return nil, setupHostPod(ctx, rt.agent, id, cfg)
			}
			return nil, m.setupGuest(ctx, rt.agent, id, cfg, claimedNetwork(net, w))
		}},
		{Name: "seal-share", Run: func(context.Context) (func() error, error) {
			if host {
				return nil, nil // no guest, no virtio-fs: cocoond alone writes the share
			}
			// Before any workload runs: from here on the guest writes only
			// in the writable mounts a container gets.
			ns, err := vm.FindShareNamespace(rt.vmm.State(), shareTag, pod.ShareDir)
			if err != nil {
				return nil, err
			}
			return nil, ns.SealRoot()
		}},
		{Name: "persist", Run: func(context.Context) (func() error, error) {
			pod.VM = rt.vmm.State()
			if err := vm.SaveState(pod.VM); err != nil {
				return nil, err
			}
			pod.State = StateReady
			_, err := m.pods.update(id, func(p *Pod) error { *p = pod; return nil })
			return nil, err
		}},
	}
	if w != nil {
		steps = withoutSteps(steps, "vm-create", "vm-start", "agent")
	} else {
		steps = withoutSteps(steps, "claim", "grow")
	}
	if _, err := pipeline.Run(bootCtx, log, steps); err != nil {
		if !bootStart.IsZero() && !booted {
			m.observeBoot(handler, h.VMM, bootStart, err)
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("pod did not boot within %v: %w", h.BootTimeout.Std(), err)
		}
		return "", err
	}
	m.mu.Lock()
	m.live[id] = rt
	m.mu.Unlock()
	go m.watchVM(id, rt)
	m.events.publish(EventCreated, id, id)
	m.events.publish(EventStarted, id, id)
	log.WithField("ips", pod.IPs).Info("pod running")
	return id, nil
}

// vmRunDir is the run dir of a pod's VM: a short name, since unix socket
// paths must fit in 108 bytes.
func (m *Manager) vmRunDir(podID string) string {
	return filepath.Join(m.opts.VMDir, podID[:min(16, len(podID))])
}

// podHostname is the pod's hostname; as with containerd, a pod that sets none
// gets the node's.
func podHostname(cfg *runtimeapi.PodSandboxConfig) string {
	if h := cfg.GetHostname(); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

func hostsFile(ips []string, hostname string) string {
	return "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + hostsLine(ips, hostname)
}

// podFiles are written once per pod into its share and bound into every
// container at these paths, unless kubelet mounts its own.
var podFiles = map[string]string{"/etc/resolv.conf": "resolv.conf", "/etc/hostname": "hostname", "/etc/hosts": "hosts"}

func writePodFiles(shareDir string, cfg *runtimeapi.PodSandboxConfig, net *PodNetwork) error {
	hostname := podHostname(cfg)
	content := map[string]string{
		"resolv.conf": resolvConf(cfg.GetDnsConfig()),
		"hostname":    hostname + "\n",
		"hosts":       hostsFile(net.IPs, hostname),
	}
	if hostNetwork(cfg) {
		// On the host's network the host's names are the pod's, as
		// containerd gives a hostNetwork pod the node's files.
		hostNetworkFiles(cfg, content)
	}
	for name, body := range content {
		if err := vm.WriteFileBeneath(shareDir, name, []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// setupGuest sends the pod's identity and network to the agent.
func (m *Manager) setupGuest(ctx context.Context, a agentapi.AgentClient, id string, cfg *runtimeapi.PodSandboxConfig, net *PodNetwork) error {
	hostname := podHostname(cfg)
	// Namespaced sysctls apply to the whole guest: the pod's containers share
	// its network and IPC namespaces, so libcontainer cannot set them per container.
	sysctls, err := ocispec.PodSysctls(cfg)
	if err != nil {
		return err
	}
	entropy := make([]byte, guestEntropyBytes)
	if _, err := rand.Read(entropy); err != nil {
		return fmt.Errorf("entropy for the guest: %w", err)
	}
	_, err = a.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{
		SandboxId: id,
		// A guest booted ahead of its pod, or restored, has a stale clock
		// and random state it may share with others.
		ClockUnixNano: time.Now().UnixNano(),
		Entropy:       entropy,
		Hostname:      hostname,
		ResolvConf:    resolvConf(cfg.GetDnsConfig()),
		Hosts:         hostsFile(net.IPs, hostname),
		Sysctls:       sysctls,
		// shareProcessNamespace: the agent makes a PID namespace the pod's containers join.
		SharedPidNamespace: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetPid() == runtimeapi.NamespaceMode_POD,
		Shares:             []*agentapi.Share{{Kind: agentapi.Share_VIRTIOFS, Tag: shareTag, MountPoint: guestShare}},
	})
	if err != nil {
		return fmt.Errorf("agent CreateSandbox: %w", err)
	}
	if net.Interface != nil {
		if _, err := a.UpdateInterface(ctx, net.Interface); err != nil {
			return fmt.Errorf("agent UpdateInterface: %w", err)
		}
	}
	if net.Routes != nil && len(net.Routes.Routes) > 0 {
		if _, err := a.UpdateRoutes(ctx, net.Routes); err != nil {
			return fmt.Errorf("agent UpdateRoutes: %w", err)
		}
	}
	return nil
}

func resolvConf(dns *runtimeapi.DNSConfig) string {
	if dns == nil {
		return ""
	}
	var b strings.Builder
	for _, s := range dns.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(dns.GetSearches()) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(dns.GetSearches(), " "))
	}
	if len(dns.GetOptions()) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(dns.GetOptions(), " "))
	}
	return b.String()
}

func hostsLine(ips []string, hostname string) string {
	if len(ips) == 0 {
		return ""
	}
	ip, _, _ := strings.Cut(ips[0], "/")
	return ip + "\t" + hostname + "\n"
}

// watchVM marks the pod NOTREADY and its containers EXITED when the VM dies
// without being asked to.
func (m *Manager) watchVM(id string, rt *podRuntime) {
	<-rt.vmm.Done()
	m.mu.Lock()
	current := m.live[id] == rt
	m.mu.Unlock()
	if !current {
		return // stopped on request
	}
	m.opts.Log.WithField("pod", id).WithError(rt.vmm.Err()).Warn("pod VM died")
	m.markDead(id, fmt.Sprintf("VM died: %v", rt.vmm.Err()))
}

// markDead records a pod whose VM is gone as NOTREADY and its containers
// (but those still being created, which their CreateContainer undoes) as
// exited with the reason.
func (m *Manager) markDead(id, reason string) {
	m.mu.Lock()
	delete(m.live, id)
	m.mu.Unlock()
	_, _ = m.pods.update(id, func(p *Pod) error { p.State, p.Reason = StateNotReady, reason; return nil })
	ended := vmDiedExit(time.Now().UnixNano(), reason)
	for _, c := range m.containers.list() {
		if c.PodID == id {
			m.recordExit(c.ID, ended)
		}
	}
}
