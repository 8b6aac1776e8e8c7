// Package agentclient is cocoond's side of the ttRPC connection to a VM's agent:
// it dials and waits for the agent, authenticates with the VM's token, observes
// calls, and turns the agent's error answers into GuestErrors. Callers use the
// generated agentapi clients on the *ttrpc.Client it returns. It knows nothing
// of VMs (vm/ imports it), so the drivers, sandbox/ and tests can all use it.
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// Dialer connects to a VM's agent.
type Dialer func(ctx context.Context) (net.Conn, error)

// Wait dials the agent and polls its health check until it serves or ctx
// ends; it returns the connected client. Over virtio-serial the VMM holds what
// we write until the guest opens its port, so the first check waits long
// (short ones would be answered late, after their caller gave up); later
// checks are short in case the first was lost. opts configure the client
// (ObserveCalls, for one); a TokenConn's token is added to them, and
// the agent's error answers become GuestErrors (innermost, so every other
// interceptor sees them as the caller will). An agent refusing the token is
// an error at once: waiting cannot fix it.
func Wait(ctx context.Context, dial Dialer, opts ...ttrpc.ClientOpts) (*ttrpc.Client, error) {
	return wait(ctx, dial, bootCheck, opts...)
}

// Reconnect is Wait for an agent that already runs (a VM cocoond re-adopts
// after a restart): every check is short. Over virtio-serial the guest drops
// what reached its port while the agent was still closing the previous
// cocoond's session, so the first check can be lost; waiting a boot's time
// for its answer would hold the restart for nothing.
func Reconnect(ctx context.Context, dial Dialer, opts ...ttrpc.ClientOpts) (*ttrpc.Client, error) {
	return wait(ctx, dial, retryCheck, opts...)
}

// bootCheck bounds the first health check of a booting guest; retryCheck
// every later one.
const (
	bootCheck  = 10 * time.Second
	retryCheck = time.Second
)

func wait(ctx context.Context, dial Dialer, first time.Duration, opts ...ttrpc.ClientOpts) (*ttrpc.Client, error) {
	conn, err := dialRetry(ctx, dial)
	if err != nil {
		return nil, err
	}
	opts = append(append(opts, ConnOpts(conn)...), GuestErrors())
	client := ttrpc.NewClient(conn, opts...)
	health := agentapi.NewHealthClient(client)
	attempt := first
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		resp, err := health.Check(actx, &agentapi.CheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == agentapi.CheckResponse_SERVING {
			return client, nil
		}
		if GuestCode(err) == codes.Unauthenticated {
			client.Close()
			return nil, fmt.Errorf("agent refused cocoond's token: %w: %w", errdefs.ErrUnauthenticated, err)
		}
		if ctx.Err() != nil {
			client.Close()
			return nil, fmt.Errorf("agent not healthy: %w (last: %v)", ctx.Err(), err)
		}
		attempt = retryCheck
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

// CallObserver learns the outcome of every unary call to an agent
// (metrics/ counts the failures). err is nil for a successful call.
type CallObserver interface {
	ObserveAgentCall(ctx context.Context, method string, err error)
}

// ObserveCalls is a client option reporting each unary call's short
// method name ("CreateContainer") and error to o. A nil o observes nothing.
// ttrpc has no client stream interceptors, so streams are not observed.
func ObserveCalls(o CallObserver) ttrpc.ClientOpts {
	if o == nil {
		return func(*ttrpc.Client) {}
	}
	return ttrpc.WithChainUnaryClientInterceptor(func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		err := invoke(ctx, req, resp)
		reported := err
		if reported == nil && resp.Status != nil && codes.Code(resp.Status.Code) != codes.OK {
			// The agent's own error travels in the response; Call decodes it
			// only after the interceptor returns.
			reported = status.ErrorProto(resp.Status)
		}
		o.ObserveAgentCall(ctx, path.Base(info.FullMethod), reported)
		return err
	})
}

// GuestError is an error status the agent answered a unary call with. The
// guest is untrusted, so its code must not choose the code cocoond answers
// kubelet with: GuestError deliberately has no GRPCStatus method (status.Code
// and status.FromError see Unknown) and wraps no errdefs sentinel. Callers
// that give a guest code a meaning of their own ask GuestCode and wrap a
// sentinel themselves.
type GuestError struct {
	Code    codes.Code
	Message string
}

func (e *GuestError) Error() string {
	return fmt.Sprintf("guest said %s: %s", e.Code, e.Message)
}

// GuestCode is the code the agent answered err with: codes.OK for nil and
// codes.Unknown for an error that is not the agent's answer (a transport or
// context error, say).
func GuestCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var g *GuestError
	if errors.As(err, &g) {
		return g.Code
	}
	return codes.Unknown
}

// GuestErrors is the client option that turns an agent's error status into
// a *GuestError, keeping its code and message. ttrpc decodes the status into
// a gRPC status error only after the interceptors return, so the interceptor
// answers with the GuestError instead and Call returns it as is.
func GuestErrors() ttrpc.ClientOpts {
	return ttrpc.WithChainUnaryClientInterceptor(func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, _ *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		if err := invoke(ctx, req, resp); err != nil {
			return err
		}
		if st := resp.Status; st != nil && codes.Code(st.Code) != codes.OK {
			return &GuestError{Code: codes.Code(st.Code), Message: st.Message}
		}
		return nil
	})
}
