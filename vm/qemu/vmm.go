package qemu

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/agentclient"
	"github.com/cocoon-runtime/cocoon/vm"
)

// processName names the QEMU process in logs, errors and its log file.
const processName = "qemu"

// qemuVM is one QEMU VM: the shared supervisor runs its processes, the
// driver speaks QMP to it.
type qemuVM struct {
	*vm.Supervisor
	log      *logrus.Entry
	paths    paths
	vsockCID uint32
	token    []byte // the agent's token (vm.NewAgentToken)
	qmp      *qmpClient

	// afterStart, when set, runs once the guest runs: a clone waits there
	// for the guest to take the devices plugged after its restore.
	afterStart func(ctx context.Context) error

	mu    sync.Mutex     // serialises Resize and port allocation
	ports map[string]int // devices plugged after a restore → root port index
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
		case <-v.Done():
			return nil, v.Err()
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: %w (last: %v)", ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// quit asks QEMU to exit (vm.Supervisor's graceful stop). The guest's own
// graceful shutdown is the agent's DestroySandbox, which the caller sends
// first.
func (v *qemuVM) quit(ctx context.Context) error {
	return v.qmp.Execute(ctx, "quit", nil, nil)
}

// Start runs the guest CPUs (QEMU was started with -S).
func (v *qemuVM) Start(ctx context.Context) error {
	if err := v.Err(); err != nil {
		return err
	}
	if err := v.qmp.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("qemu: start %s: %w%s", v.State().ID, err, v.logTail())
	}
	if v.afterStart != nil {
		return v.afterStart(ctx)
	}
	return nil
}

// DialAgent connects to the agent: vhost-vsock where the host has it, else the
// virtio-serial port's socket (one connection at a time).
func (v *qemuVM) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := v.Err(); err != nil {
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

// logTail adds the end of QEMU's own log to an error, where the reason is.
func (v *qemuVM) logTail() string {
	if s := v.LogTail(600); s != "" {
		return " (qemu: " + s + ")"
	}
	return ""
}
