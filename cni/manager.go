package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// IfName is the pod's interface in its netns, as kubelet expects.
const IfName = "eth0"

// DefaultStateDir is where attachment records live when Options name none:
// with cocoond's other persistent state, so they survive a restart.
const DefaultStateDir = "/var/lib/cocoon/cni"

// undoTimeout bounds the DEL that undoes a failed ADD; it runs even when the
// caller's context has ended, since leaking an IP is worse than waiting.
const undoTimeout = time.Minute

// Options configure a Manager.
type Options struct {
	ConfDir string
	BinDirs []string
	// StateDir holds one record per attached pod (<id>.json) and libcni's
	// result cache (cache/), which CHECK and DEL hand to the plugins as
	// prevResult. It must survive a cocoond restart; a reboot may clear it
	// together with the netns files. Default DefaultStateDir.
	StateDir string
	Log      *logrus.Entry
}

// PodNetwork is one pod to attach.
type PodNetwork struct {
	// ID is the sandbox ID: the CNI container ID and the state's name.
	ID        string
	Name      string
	Namespace string
	UID       string
	// NetnsPath is the pod's namespace (Netns.Path).
	NetnsPath    string
	PortMappings []PortMapping
	// PodCIDR is the node's pod CIDR from UpdateRuntimeConfig; when set, it
	// is passed as the ipRanges capability.
	PodCIDR string
}

// PortMapping is a CRI port mapping, passed to the portMappings capability.
type PortMapping struct {
	HostPort      int32
	ContainerPort int32
	// Protocol is tcp (default), udp or sctp, in any case.
	Protocol string
	HostIP   string
}

// cniRunner is the part of libcni the Manager uses; tests fake it.
type cniRunner interface {
	AddNetworkList(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error)
	CheckNetworkList(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error
	DelNetworkList(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error
}

// Manager attaches pods to the node's CNI network and detaches them.
type Manager struct {
	opts  Options
	cni   cniRunner
	locks keyedMutex
	// readLink returns the MAC and MTU of a link in a netns; tests fake it.
	readLink func(netnsPath, ifName string) (net.HardwareAddr, int, error)
}

// NewManager returns a Manager; the configuration is read on every Setup.
func NewManager(opts Options) *Manager {
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	return &Manager{
		opts:     opts,
		cni:      libcni.NewCNIConfigWithCacheDir(opts.BinDirs, filepath.Join(opts.StateDir, "cache"), nil),
		readLink: linkInNetns,
	}
}

// Setup runs CNI ADD for the pod on the first usable network (LoadDefault).
// On error nothing stays attached: a partial ADD is undone with DEL. Only if
// that DEL fails too does the record stay, so Teardown can finish the job.
func (m *Manager) Setup(ctx context.Context, pod PodNetwork) (*Result, error) {
	if pod.ID == "" || strings.ContainsRune(pod.ID, '/') || pod.NetnsPath == "" {
		return nil, fmt.Errorf("%w: pod network needs an ID and a netns path", errdefs.ErrInvalidArgument)
	}
	rt, err := runtimeConf(pod)
	if err != nil {
		return nil, err
	}
	unlock := m.locks.lock(pod.ID)
	defer unlock()
	if _, err := os.Stat(statePath(m.opts.StateDir, pod.ID)); err == nil {
		return nil, fmt.Errorf("%w: pod %s is already attached", errdefs.ErrAlreadyExists, pod.ID)
	}
	network, err := LoadDefault(m.opts.ConfDir, m.opts.BinDirs)
	if err != nil {
		return nil, err
	}
	st := &state{ID: pod.ID, ConfFile: network.File, ConfList: network.List.Bytes, Runtime: rt}
	if err := st.save(m.opts.StateDir); err != nil {
		return nil, err
	}

	start := time.Now()
	raw, err := m.cni.AddNetworkList(ctx, network.List, rt.conf())
	if err != nil {
		return nil, m.undo(ctx, st, fmt.Errorf("CNI ADD on %s: %w", network.List.Name, err))
	}
	res, err := newResult(raw, IfName)
	if err == nil {
		res.MAC, res.MTU, err = m.readLink(pod.NetnsPath, IfName)
	}
	if err == nil {
		st.Result = res
		err = st.save(m.opts.StateDir)
	}
	if err != nil {
		return nil, m.undo(ctx, st, err)
	}
	m.opts.Log.WithFields(logrus.Fields{"pod": pod.ID, "network": network.List.Name, "ips": res.IPs, "took": time.Since(start)}).Info("pod network attached")
	return res, nil
}

// undo detaches a pod whose Setup failed and returns cause, joined with the
// DEL's error if that failed too (the record then stays for Teardown).
func (m *Manager) undo(ctx context.Context, st *state, cause error) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	if err := m.del(dctx, st); err != nil {
		m.opts.Log.WithError(err).WithField("pod", st.ID).Warn("undoing a failed CNI ADD failed; Teardown will retry")
		return errors.Join(cause, fmt.Errorf("undo: %w", err))
	}
	if err := removeState(m.opts.StateDir, st.ID); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// Teardown runs CNI DEL with the configuration and arguments ADD used, read
// from the record, so it works after a restart. A pod without a record is
// detached already: nil. The record goes only once DEL succeeded.
func (m *Manager) Teardown(ctx context.Context, id string) error {
	unlock := m.locks.lock(id)
	defer unlock()
	st, err := m.loadState(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	start := time.Now()
	if err := m.del(ctx, st); err != nil {
		return err
	}
	if err := removeState(m.opts.StateDir, id); err != nil {
		return err
	}
	m.opts.Log.WithFields(logrus.Fields{"pod": id, "took": time.Since(start)}).Info("pod network detached")
	return nil
}

func (m *Manager) del(ctx context.Context, st *state) error {
	list, err := st.list()
	if err != nil {
		return err
	}
	rt := st.Runtime.conf()
	// The spec lets a runtime pass an empty netns once it is gone; plugins
	// then release what lives outside it (IPs, host veth, iptables). Some
	// fail on a path that is no longer a namespace, so none gets one.
	if ok, _ := isNetns(rt.NetNS); !ok {
		rt.NetNS = ""
	}
	err = m.cni.DelNetworkList(ctx, list, rt)
	if err != nil && alreadyGone(err) {
		m.opts.Log.WithError(err).WithField("pod", st.ID).Warn("CNI DEL: already gone, treated as done")
		err = nil
	}
	if err != nil {
		return fmt.Errorf("CNI DEL on %s: %w", list.Name, err)
	}
	return nil
}

// alreadyGone reports whether a DEL error says the thing to delete does not
// exist, which the spec says DEL must tolerate and some plugins report
// anyway. It matches the strings containerd matches; a missing plugin binary
// ("failed to find plugin") is not among them: the record must stay.
func alreadyGone(err error) bool {
	s := err.Error()
	return strings.Contains(s, "not found") || strings.Contains(s, "no such file or directory") ||
		strings.Contains(s, "does not exist")
}

// Check runs CNI CHECK for an attached pod; one without a record is
// ErrNotFound.
func (m *Manager) Check(ctx context.Context, id string) error {
	unlock := m.locks.lock(id)
	defer unlock()
	st, err := m.loadState(id)
	if errors.Is(err, os.ErrNotExist) || (err == nil && st.Result == nil) {
		return fmt.Errorf("%w: pod %s has no network", errdefs.ErrNotFound, id)
	}
	if err != nil {
		return err
	}
	list, err := st.list()
	if err != nil {
		return err
	}
	if err := m.cni.CheckNetworkList(ctx, list, st.Runtime.conf()); err != nil {
		return fmt.Errorf("CNI CHECK on %s: %w", list.Name, err)
	}
	return nil
}

// Attached lists the IDs of the pods with an attachment record.
func (m *Manager) Attached() ([]string, error) {
	entries, err := os.ReadDir(m.opts.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok { // a directory in a record's place too: Teardown moves it aside
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Result returns what Setup returned, from the record (after a restart
// too); a pod without one is ErrNotFound.
func (m *Manager) Result(id string) (*Result, error) {
	st, err := m.loadState(id)
	if errors.Is(err, os.ErrNotExist) || (err == nil && st.Result == nil) {
		return nil, fmt.Errorf("%w: pod %s has no network", errdefs.ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return st.Result, nil
}

// runtimeConf builds the arguments of ADD as kubelet's runtimes pass them.
func runtimeConf(pod PodNetwork) (runtimeState, error) {
	rt := runtimeState{
		ContainerID: pod.ID,
		NetNS:       pod.NetnsPath,
		IfName:      IfName,
		// IgnoreUnknown: plugins that do not know the K8S_ arguments must
		// not fail on them.
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", pod.ID},
			{"K8S_POD_UID", pod.UID},
		},
		CapabilityArgs: map[string]any{},
	}
	var ports []map[string]any
	for _, p := range pod.PortMappings {
		// A mapping without a host port only documents the container port
		// (kubelet sends those); portmap would reject it.
		if p.HostPort <= 0 {
			continue
		}
		proto := strings.ToLower(p.Protocol)
		switch proto {
		case "":
			proto = "tcp"
		case "tcp", "udp", "sctp":
		default:
			return rt, fmt.Errorf("%w: port mapping protocol %q", errdefs.ErrInvalidArgument, p.Protocol)
		}
		if p.ContainerPort <= 0 || p.ContainerPort > 65535 || p.HostPort > 65535 {
			return rt, fmt.Errorf("%w: port mapping %d→%d", errdefs.ErrInvalidArgument, p.HostPort, p.ContainerPort)
		}
		m := map[string]any{"hostPort": p.HostPort, "containerPort": p.ContainerPort, "protocol": proto}
		if p.HostIP != "" {
			if _, err := netip.ParseAddr(p.HostIP); err != nil {
				return rt, fmt.Errorf("%w: port mapping host IP %q", errdefs.ErrInvalidArgument, p.HostIP)
			}
			m["hostIP"] = p.HostIP
		}
		ports = append(ports, m)
	}
	if len(ports) > 0 {
		rt.CapabilityArgs["portMappings"] = ports
	}
	if pod.PodCIDR != "" {
		p, err := netip.ParsePrefix(pod.PodCIDR)
		if err != nil {
			return rt, fmt.Errorf("%w: pod CIDR %q", errdefs.ErrInvalidArgument, pod.PodCIDR)
		}
		// One range set with one range: host-local allocates from it.
		rt.CapabilityArgs["ipRanges"] = [][]map[string]any{{{"subnet": p.Masked().String()}}}
	}
	if len(rt.CapabilityArgs) == 0 {
		rt.CapabilityArgs = nil
	}
	return rt, nil
}

// linkInNetns reads a link's MAC and MTU through a netlink socket opened in
// the pod's namespace; no thread has to enter it.
func linkInNetns(netnsPath, ifName string) (net.HardwareAddr, int, error) {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, 0, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, 0, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		return nil, 0, fmt.Errorf("%s in %s: %w", ifName, netnsPath, err)
	}
	return l.Attrs().HardwareAddr, l.Attrs().MTU, nil
}
