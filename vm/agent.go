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
// ends; it returns the connected client. Requests sent before the guest opened
// its end are answered late or lost, so each check has a short deadline.
func WaitAgent(ctx context.Context, dial Dialer) (*ttrpc.Client, error) {
	conn, err := dialRetry(ctx, dial)
	if err != nil {
		return nil, err
	}
	client := ttrpc.NewClient(conn)
	health := agentapi.NewHealthClient(client)
	attempt := 500 * time.Millisecond
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
		if attempt < 4*time.Second {
			attempt *= 2
		}
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
