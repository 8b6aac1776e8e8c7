package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/vm"
)

// The warm pool keeps, per runtime handler, VMs booted ahead of their pods.
// A warm VM is made exactly as a pod's VM is, under a pod ID it takes when
// claimed, at the pod's paths: its run dir and empty share tmpfs
// (<RunDir>/<id>), its VM run dir, and its netns (<NetnsRoot>/<id>) with a
// tap the VM's NIC uses but connected to nothing. Claiming runs CNI ADD in
// that netns, joins the tap to the new veth, writes the pod's files into the
// share and hands the guest its identity.
//
// A warm VM has no pod record: a cocoond restart finds its dirs, netns and
// VM unclaimed and reclaims them with the other strays (Recover), and the
// VM's own state file, written before its process starts, is what lets
// Recover find the process. Nothing of a warm VM outlives a crash.

// warmVM is a booted VM waiting for a pod.
type warmVM struct {
	id       string // the pod ID it becomes
	handler  string
	runDir   string
	shareDir string
	netns    string
	mac      net.HardwareAddr // the guest NIC's until the claim sets the veth's
	vmm      vm.VMM
	client   *ttrpc.Client
	claimed  chan struct{} // closed when taken out of the pool
}

// WarmMaker makes one warm VM for a handler. The default boots one
// (Manager.bootWarm); a template restore can take its place.
type WarmMaker func(ctx context.Context, handler string, h config.Handler) (*warmVM, error)

// warmNice is the scheduling niceness of a warm VM's processes until it is
// claimed: booting and idling in the background must not take CPU from the
// pods that run.
const warmNice = 19

// warmBootTimeouts: a warm boot runs at the lowest priority, so it may take
// several times a pod's boot timeout on a busy host.
const warmBootTimeouts = 4

// defaultRefillDelay is how long a pool waits after a claim before it boots
// the replacement (pool.refillDelay).
const defaultRefillDelay = 2 * time.Second

// autoPoolGiveUp is how many boots an auto-sized pool tries before it
// concludes its VMs cannot boot here.
const autoPoolGiveUp = 3

// guestEntropyBytes is what each pod's guest gets from the host's RNG.
const guestEntropyBytes = 64

// pool is one handler's warm VMs and the loop that keeps it full.
type pool struct {
	handler string
	h       config.Handler
	size    int
	auto    bool // sized by the host, not by the config
	// refillDelay is how long a refill waits after a VM left the pool.
	refillDelay time.Duration
	make        WarmMaker
	discard     func(context.Context, *warmVM) error
	log         *logrus.Entry

	mu       sync.Mutex
	ready    []*warmVM
	stopping bool
	kick     chan struct{} // a VM left the pool: refill
	cancel   context.CancelFunc
	done     chan struct{}
}

// StartPools starts the warm pool of every handler whose pool size on this
// host is above 0 (config.Pool.Resolve). Call it after Recover, which must
// not see warm VMs as strays in the making. make may be nil (boot them).
func (m *Manager) StartPools(maker WarmMaker) {
	if maker == nil {
		maker = m.bootWarm
	}
	if _, ok := m.opts.Network.(warmNetwork); !ok {
		m.opts.Log.Info("warm pools off: the network cannot hold a warm VM's tap")
		return
	}
	delay := m.refillDelay
	if delay == 0 {
		delay = defaultRefillDelay
	}
	cpus, avail := hostRoom()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pools == nil {
		m.pools = map[string]*pool{}
	}
	for _, name := range m.opts.Runtime.HandlerNames() {
		h := m.opts.Runtime.Handlers[name]
		if h.Kind == config.KindHost {
			continue // host pods have no VM to keep warm
		}
		size := h.Pool.Resolve(cpus, avail, h.MemoryMiB)
		log := m.opts.Log.WithFields(logrus.Fields{"handler": name, "pool_size": size})
		if size == 0 || m.pools[name] != nil {
			continue
		}
		driver, ok := m.opts.Drivers[h.VMM]
		if !ok {
			log.Infof("no warm pool: VMM %q is not available", h.VMM)
			continue
		}
		// A pool nobody sized does not boot VMs that cannot run here (a
		// VMM without its binary or KVM); one an operator sized tries, and
		// says why it fails.
		if u, ok := driver.(usableDriver); ok && isAuto(h.Pool) {
			if err := u.Usable(); err != nil {
				log.WithError(err).Info("no warm pool: this handler's VMs cannot run here")
				continue
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		p := &pool{
			handler: name, h: h, size: size, auto: isAuto(h.Pool), make: maker, refillDelay: delay, discard: m.discardWarm, log: log,
			kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}),
		}
		m.pools[name] = p
		go p.run(ctx)
		log.Info("warm pool started")
	}
}

// usableDriver is a driver that can tell, without booting, whether its VMs
// can run on this host.
type usableDriver interface {
	Usable() error
}

// isAuto says whether the operator left the pool's size to the host.
func isAuto(p config.Pool) bool { return p.Size == nil || *p.Size == config.PoolAuto }

// StopPools stops refilling and discards every warm VM. Warm VMs are not
// kept across a cocoond restart (a restart reclaims them as strays anyway),
// so stopping them here frees their memory at once rather than later.
func (m *Manager) StopPools(ctx context.Context) error {
	m.mu.Lock()
	pools := m.pools
	m.mu.Unlock()
	var errs []error
	for _, p := range pools {
		errs = append(errs, p.stop(ctx))
	}
	return errors.Join(errs...)
}

// takeWarm takes a live warm VM of handler out of its pool, or returns nil.
func (m *Manager) takeWarm(handler string) *warmVM {
	m.mu.Lock()
	p := m.pools[handler]
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.take()
}

// giveBack returns an unclaimed warm VM (the claim stopped before it used
// it) to its pool. nil is fine.
func (m *Manager) giveBack(w *warmVM) {
	if w == nil {
		return
	}
	m.mu.Lock()
	p := m.pools[w.handler]
	m.mu.Unlock()
	if p == nil || !p.put(w) {
		if err := m.discardWarm(context.Background(), w); err != nil {
			m.opts.Log.WithField("warm_vm", w.id).WithError(err).Warn("discarding a warm VM")
		}
	}
}

// WarmVMs counts the warm VMs ready per handler (for tests and status).
func (m *Manager) WarmVMs() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for name, p := range m.pools {
		p.mu.Lock()
		out[name] = len(p.ready)
		p.mu.Unlock()
	}
	return out
}

// run keeps the pool full, one boot at a time, until stopped.
func (p *pool) run(ctx context.Context) {
	defer close(p.done)
	backoff := time.Second
	failures, booted := 0, false
	for {
		if p.missing() > 0 {
			w, err := p.make(ctx, p.handler, p.h)
			if ctx.Err() != nil {
				if w != nil {
					_ = p.discard(context.Background(), w)
				}
				return
			}
			if err != nil {
				failures++
				// An auto-sized pool whose VMs never boot here (a VMM
				// without its binary or KVM) turns itself off.
				if p.auto && !booted && failures >= autoPoolGiveUp {
					p.log.WithError(err).Warn("warm pool off: its VMs do not boot on this host")
					return
				}
				p.log.WithError(err).Warnf("warm VM failed; retrying in %v", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return
				}
				backoff = min(2*backoff, time.Minute)
				continue
			}
			backoff, failures, booted = time.Second, 0, true
			if !p.put(w) {
				_ = p.discard(context.Background(), w)
				return
			}
			continue
		}
		select {
		case <-p.kick:
		case <-ctx.Done():
			return
		}
		// The pod that just took a VM creates its containers next; a boot
		// competes with it for CPU even at nice 19 (the guest, cocoond and
		// virtiofsd share the cores), so let it start first.
		select {
		case <-time.After(p.refillDelay):
		case <-ctx.Done():
			return
		}
	}
}

func (p *pool) missing() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size - len(p.ready)
}

// put adds w to the pool and watches it; false when the pool is stopping.
func (p *pool) put(w *warmVM) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return false
	}
	w.claimed = make(chan struct{})
	p.ready = append(p.ready, w)
	go p.watch(w, w.claimed)
	return true
}

// take pops the oldest live warm VM and asks for a refill.
func (p *pool) take() *warmVM {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.ready) > 0 {
		w := p.ready[0]
		p.ready = p.ready[1:]
		close(w.claimed)
		p.refill()
		select {
		case <-w.vmm.Done():
			// Died just now: its watcher has let go of it, discard here.
			go func() { _ = p.discard(context.Background(), w) }()
			continue
		default:
		}
		return w
	}
	return nil
}

func (p *pool) refill() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// watch replaces w if its VM dies while it waits.
func (p *pool) watch(w *warmVM, claimed <-chan struct{}) {
	select {
	case <-claimed:
		return
	case <-w.vmm.Done():
	}
	p.mu.Lock()
	i := -1
	for j, r := range p.ready {
		if r == w {
			i = j
		}
	}
	if i >= 0 {
		p.ready = append(p.ready[:i], p.ready[i+1:]...)
	}
	p.mu.Unlock()
	if i < 0 {
		return // claimed meanwhile: the claim finds it dead
	}
	p.log.WithField("warm_vm", w.id).WithError(w.vmm.Err()).Warn("warm VM died; replacing it")
	if err := p.discard(context.Background(), w); err != nil {
		p.log.WithField("warm_vm", w.id).WithError(err).Warn("discarding a dead warm VM")
	}
	p.refill()
}

// stop ends the refill loop and discards the waiting VMs.
func (p *pool) stop(ctx context.Context) error {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	p.cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("warm pool %s: %w", p.handler, ctx.Err())
	}
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	for _, w := range ready {
		close(w.claimed)
	}
	p.mu.Unlock()
	// In parallel: a shutdown has a deadline, and each VM stop waits for
	// its guest a little.
	errs := make([]error, len(ready))
	var wg sync.WaitGroup
	for i, w := range ready {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = p.discard(ctx, w) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// hostRoom reports the CPUs and the available memory (MiB) the auto pool
// size is decided from.
func hostRoom() (cpus int, memAvailableMiB uint64) {
	return runtime.NumCPU(), memAvailable("/proc/meminfo")
}

// memAvailable reads MemAvailable (MiB) from a meminfo file; 0 when unknown.
func memAvailable(path string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == "MemAvailable:" {
			kib, err := strconv.ParseUint(string(f[1]), 10, 64)
			if err != nil {
				return 0
			}
			return kib >> 10
		}
	}
	return 0
}
