package agentclient

import (
	"context"
	"net"
	"sync"
	"testing"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
)

// firstCheckLost never answers the first health check, as an agent does
// whose virtio-serial port dropped it while the previous cocoond's session
// was closing; it answers every later one.
type firstCheckLost struct {
	mu    sync.Mutex
	calls int
	// lost holds the first check until the test ends: its answer never
	// comes, whatever deadline the server side sees.
	lost chan struct{}
}

func (f *firstCheckLost) Check(ctx context.Context, _ *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	f.mu.Lock()
	f.calls++
	first := f.calls == 1
	f.mu.Unlock()
	if first {
		<-f.lost
		return nil, ctx.Err()
	}
	return &agentapi.CheckResponse{Status: agentapi.CheckResponse_SERVING}, nil
}

// TestReconnectSurvivesALostFirstCheck: re-adopting a running agent whose
// first check is lost connects within a deadline shorter than a boot's
// first check; Wait (for a booting guest) gives that first check its time.
func TestReconnectSurvivesALostFirstCheck(t *testing.T) {
	for _, tc := range []struct {
		name    string
		connect func(context.Context, Dialer) error
		wantErr bool
	}{
		{"Reconnect", func(ctx context.Context, d Dialer) error {
			c, err := Reconnect(ctx, d)
			if c != nil {
				c.Close()
			}
			return err
		}, false},
		{"Wait keeps waiting on the boot check", func(ctx context.Context, d Dialer) error {
			c, err := Wait(ctx, d)
			if c != nil {
				c.Close()
			}
			return err
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lost := make(chan struct{})
			t.Cleanup(func() { close(lost) })
			sock := agenttest.ServeHealth(t, &firstCheckLost{lost: lost})
			// Well under bootCheck, well over retryCheck.
			ctx, cancel := context.WithTimeout(context.Background(), bootCheck/2)
			defer cancel()
			err := tc.connect(ctx, func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			})
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want an error: %v", err, tc.wantErr)
			}
		})
	}
}
