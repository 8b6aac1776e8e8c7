// Package agenttest serves fake agents to tests of the host side.
package agenttest

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/containerd/ttrpc"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// ServeHealth serves svc as the agent's Health service, and no other, on a
// unix socket in t's temp dir until t ends; it returns the socket's path.
func ServeHealth(t testing.TB, svc agentapi.HealthService) string {
	return Serve(t, nil, svc)
}

// Serve serves agent (when not nil) and health over ttRPC on a unix socket in
// t's temp dir until t ends; it returns the socket's path.
func Serve(t testing.TB, agent agentapi.AgentService, health agentapi.HealthService) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	if agent != nil {
		agentapi.RegisterAgentService(srv, agent)
	}
	agentapi.RegisterHealthService(srv, health)
	go func() { _ = srv.Serve(context.Background(), lis) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

// Healthy is a Health service that always serves.
type Healthy struct{}

// Check implements agentapi.HealthService.
func (Healthy) Check(context.Context, *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	return &agentapi.CheckResponse{Status: agentapi.CheckResponse_SERVING}, nil
}
