package vm

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// probeDriver makes probeVMs that behave as told.
type probeDriver struct {
	createErr error
	vm        *probeVM
}

func (d *probeDriver) Name() string { return "probe" }
func (d *probeDriver) Create(context.Context, *Spec) (VMM, error) {
	if d.createErr != nil {
		return nil, d.createErr
	}
	return d.vm, nil
}
func (d *probeDriver) Adopt(context.Context, *State) (VMM, error) { return nil, ErrNotRunning }

// probeVM serves an agent health check on agentSock when it is set, and
// dies right after Start when dies is set.
type probeVM struct {
	VMM       // methods the probe does not call panic
	agentSock string
	dies      bool
	done      chan struct{}
	stops     int
}

func (v *probeVM) Start(context.Context) error {
	if v.dies {
		close(v.done)
	}
	return nil
}
func (v *probeVM) Stop(context.Context) error { v.stops++; return nil }
func (v *probeVM) Done() <-chan struct{}      { return v.done }
func (v *probeVM) Err() error                 { return errors.New("qemu exited: signal: aborted") }
func (v *probeVM) DialAgent(ctx context.Context) (net.Conn, error) {
	if v.agentSock == "" {
		return nil, errors.New("connection refused")
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", v.agentSock)
}

type healthyAgent struct{}

func (healthyAgent) Check(context.Context, *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	return &agentapi.CheckResponse{Status: agentapi.CheckResponse_SERVING}, nil
}

func serveAgent(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	agentapi.RegisterHealthService(srv, healthyAgent{})
	go func() { _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestBootProbe(t *testing.T) {
	for _, tt := range []struct {
		name      string
		driver    func(t *testing.T) *probeDriver
		wantErr   error  // errors.Is
		wantText  string // in the error
		wantStops int
	}{
		{name: "agent answers", wantStops: 1, driver: func(t *testing.T) *probeDriver {
			return &probeDriver{vm: &probeVM{agentSock: serveAgent(t), done: make(chan struct{})}}
		}},
		{name: "create fails", wantText: "no qemu", driver: func(*testing.T) *probeDriver {
			return &probeDriver{createErr: errors.New("no qemu")}
		}},
		{name: "VMM dies: no waiting for the deadline", wantErr: ErrNotRunning, wantText: "signal: aborted before the agent answered", wantStops: 1,
			driver: func(*testing.T) *probeDriver {
				return &probeDriver{vm: &probeVM{dies: true, done: make(chan struct{})}}
			}},
		{name: "guest hangs", wantErr: context.DeadlineExceeded, wantStops: 1, driver: func(*testing.T) *probeDriver {
			return &probeDriver{vm: &probeVM{done: make(chan struct{})}}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.driver(t)
			start := time.Now()
			timeout := time.Minute // only a hanging guest may use it up
			if tt.wantErr == context.DeadlineExceeded {
				timeout = 300 * time.Millisecond
			}
			took, err := BootProbe(context.Background(), d, &Spec{ID: "p"}, timeout)
			if tt.wantErr == nil && tt.wantText == "" {
				if err != nil || took <= 0 {
					t.Fatalf("BootProbe = %v, %v", took, err)
				}
			} else if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %v, want %v containing %q", err, tt.wantErr, tt.wantText)
			}
			if tt.wantErr == ErrNotRunning && time.Since(start) > timeout/2 {
				t.Fatalf("a dead VMM was waited on for %v", time.Since(start))
			}
			if d.vm != nil && d.vm.stops != tt.wantStops {
				t.Fatalf("stopped %d times, want %d", d.vm.stops, tt.wantStops)
			}
		})
	}
}
