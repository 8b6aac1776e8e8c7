package vm

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/containerd/ttrpc"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// Dialer connects to a VM's agent.
type Dialer func(ctx context.Context) (net.Conn, error)

// WaitAgent dials the agent and polls its health check until it serves or ctx
// ends; it returns the connected client. Over virtio-serial the VMM holds what
// we write until the guest opens its port, so the first check waits long
// (short ones would be answered late, after their caller gave up); later
// checks are short in case the first was lost.
func WaitAgent(ctx context.Context, dial Dialer) (*ttrpc.Client, error) {
	conn, err := dialRetry(ctx, dial)
	if err != nil {
		return nil, err
	}
	client := ttrpc.NewClient(conn)
	health := agentapi.NewHealthClient(client)
	attempt := 10 * time.Second
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		resp, err := health.Check(actx, &agentapi.CheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == agentapi.CheckResponse_SERVING {
			return client, nil
		}
		if ctx.Err() != nil {
			client.Close()
			return nil, fmt.Errorf("agent not healthy: %w (last: %v)", ctx.Err(), err)
		}
		attempt = time.Second
	}
}

func dialRetry(ctx context.Context, dial Dialer) (net.Conn, error) {
	for {
		conn, err := dial(ctx)
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial agent: %w (last: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
