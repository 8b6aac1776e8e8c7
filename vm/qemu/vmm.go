package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/agentclient"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// qemuVM is one QEMU process and what it needs.
type qemuVM struct {
	driver   *Driver
	spec     vm.Spec
	paths    paths
	log      *logrus.Entry
	accel    string
	vsockCID uint32
	token    []byte // the agent's token (vm.NewAgentToken)

	proc    *vm.Watched
	helpers []*vm.Watched
	qmp     *qmpClient
	console *vm.Console // copies the serial console while this cocoond runs
	cleanup *pipeline.Cleanup

	// afterStart, when set, runs once the guest runs: a clone waits there
	// for the guest to take the devices plugged after its restore.
	afterStart func(ctx context.Context) error

	mu       sync.Mutex
	vcpus    uint32
	memMiB   uint64
	ports    map[string]int // hotplugged device id → root port index
	dimms    int
	stopping bool

	done     chan struct{}
	doneOnce sync.Once
	err      error
}

func (v *qemuVM) connectQMP(ctx context.Context) (*qmpClient, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		q, err := dialQMP(ctx, v.paths.qmp)
		if err == nil {
			return q, nil
		}
		select {
		case <-v.proc.Done():
			return nil, fmt.Errorf("qemu exited: %v", v.proc.Err())
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: %w (last: %v)", ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// supervise reports the VM dead when QEMU exits, and kills QEMU when a helper
// it cannot work without (virtiofsd) dies.
func (v *qemuVM) supervise() {
	helperDied := make(chan *vm.Watched, len(v.helpers))
	for _, h := range v.helpers {
		go func() {
			select {
			case <-h.Done():
				helperDied <- h
			case <-v.proc.Done():
			}
		}()
	}
	select {
	case <-v.proc.Done():
		v.finish(v.proc.Err())
	case h := <-helperDied:
		// A guest powering off (DestroySandbox) closes virtiofsd's
		// connection before QEMU has quite exited: give QEMU a moment to
		// show that this is a shutdown, not a broken VM.
		select {
		case <-v.proc.Done():
			v.finish(v.proc.Err())
			return
		case <-time.After(helperGrace):
		}
		v.mu.Lock()
		stopping := v.stopping
		v.mu.Unlock()
		if !stopping {
			v.log.WithField("helper", h.Name).Error("VM helper died, stopping the VM")
		}
		_ = v.proc.Terminate(time.Second)
		v.finish(fmt.Errorf("%s died: %v", h.Name, h.Err()))
	}
}

// helperGrace is how long QEMU may take to exit after its virtiofsd did
// before the VM counts as broken.
const helperGrace = 2 * time.Second

func (v *qemuVM) finish(err error) {
	v.doneOnce.Do(func() {
		v.mu.Lock()
		stopping := v.stopping
		v.mu.Unlock()
		if err == nil {
			err = errors.New("qemu exited")
		}
		v.err = fmt.Errorf("%w: %v", vm.ErrNotRunning, err)
		if !stopping {
			v.log.WithError(err).Warn("VM died")
		}
		close(v.done)
	})
}

func (v *qemuVM) Done() <-chan struct{} { return v.done }

func (v *qemuVM) Err() error {
	select {
	case <-v.done:
		return v.err
	default:
		return nil
	}
}

func (v *qemuVM) alive() error {
	select {
	case <-v.done:
		return v.err
	default:
		return nil
	}
}

// Start runs the guest CPUs (QEMU was started with -S).
func (v *qemuVM) Start(ctx context.Context) error {
	if err := v.alive(); err != nil {
		return err
	}
	if err := v.qmp.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("qemu: start %s: %w%s", v.spec.ID, err, v.logTail())
	}
	if v.afterStart != nil {
		return v.afterStart(ctx)
	}
	return nil
}

// Stop asks QEMU to quit, kills it if it does not, and removes everything the
// VM had: helpers, sockets, the run dir. The guest's own graceful shutdown is
// the agent's DestroySandbox, which the caller sends first.
func (v *qemuVM) Stop(ctx context.Context) error {
	v.mu.Lock()
	v.stopping = true
	v.mu.Unlock()
	if v.alive() == nil {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_ = v.qmp.Execute(qctx, "quit", nil, nil)
		cancel()
		select {
		case <-v.done:
		case <-time.After(3 * time.Second):
		case <-ctx.Done():
		}
	}
	err := v.cleanup.Unwind(v.log)
	<-v.done
	return err
}

// DialAgent connects to the agent: vhost-vsock where the host has it, else the
// virtio-serial port's socket (one connection at a time).
func (v *qemuVM) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := v.alive(); err != nil {
		return nil, err
	}
	var conn net.Conn
	var err error
	if v.vsockCID != 0 {
		conn, err = vsock.Dial(v.vsockCID, 1024, nil)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "unix", v.paths.agent)
	}
	if err != nil || v.token == nil {
		return conn, err
	}
	return &agentclient.TokenConn{Conn: conn, Token: v.token}, nil
}

// Pids are QEMU and its virtiofsd helpers.
func (v *qemuVM) Pids() []int {
	pids := []int{v.proc.Pid}
	for _, h := range v.helpers {
		pids = append(pids, h.Pid)
	}
	return pids
}

// State is what a restarted cocoond needs to Adopt this VM.
func (v *qemuVM) State() *vm.State {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := &vm.State{
		Driver: "qemu", ID: v.spec.ID, RunDir: v.spec.RunDir,
		ControlSocket: v.paths.qmp, AgentSocket: v.paths.agent, AgentVsockCID: v.vsockCID,
		VCPUs: v.vcpus, MemoryMiB: v.memMiB, Accel: v.accel,
	}
	if v.proc != nil { // nil while Create has not started QEMU yet
		st.Pid, st.StartTime = v.proc.Pid, v.proc.StartTime
	}
	for _, h := range v.helpers {
		st.Helpers = append(st.Helpers, h.Process)
	}
	return st
}

// logTail adds the end of QEMU's own log to an error, where the reason is.
func (v *qemuVM) logTail() string {
	if s := vm.FileTail(filepath.Join(v.spec.RunDir, "qemu.log"), 600); s != "" {
		return " (qemu: " + s + ")"
	}
	return ""
}
