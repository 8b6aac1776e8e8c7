package sandbox

import (
	"errors"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

func TestPlacePodFollowsThePolicy(t *testing.T) {
	t.Parallel()
	withNS := func(ns *runtimeapi.NamespaceOption) *runtimeapi.PodSandboxConfig {
		c := podConfig()
		c.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}}
		return c
	}
	hostNet := withNS(&runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE})
	hostPID := withNS(&runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE})
	hostIPC := withNS(&runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE})
	vmHandler := config.Handler{Kind: config.KindVM, VMM: "qemu"}
	hostHandler := config.Handler{Kind: config.KindHost, VMM: "qemu", BootTimeout: 7}
	for _, tt := range []struct {
		name     string
		policy   string
		handlers map[string]config.Handler
		cfg      *runtimeapi.PodSandboxConfig
		handler  string
		wantKind string
		wantErr  error
	}{
		{name: "a plain pod gets a VM", policy: config.HostPodsHost, cfg: podConfig(), wantKind: config.KindVM},
		{name: "host network runs on the host", policy: config.HostPodsHost, cfg: hostNet, wantKind: config.KindHost},
		{name: "host pid runs on the host", policy: config.HostPodsHost, cfg: hostPID, wantKind: config.KindHost},
		{name: "host ipc runs on the host", policy: config.HostPodsHost, cfg: hostIPC, wantKind: config.KindHost},
		{name: "reject refuses host namespaces", policy: config.HostPodsReject, cfg: hostNet, wantErr: errdefs.ErrInvalidArgument},
		{name: "reject keeps plain pods", policy: config.HostPodsReject, cfg: podConfig(), wantKind: config.KindVM},
		{name: "a host handler runs a plain pod on the host", policy: config.HostPodsReject, cfg: podConfig(), handler: "hosty", wantKind: config.KindHost},
		{name: "a host handler runs host namespaces whatever the policy", policy: config.HostPodsReject, cfg: hostPID, handler: "hosty", wantKind: config.KindHost},
		{name: "the policy picks the configured host handler", policy: config.HostPodsHost, cfg: hostNet,
			handlers: map[string]config.Handler{"h": vmHandler, "hosty": hostHandler}, wantKind: config.KindHost},
		{name: "unknown handler", policy: config.HostPodsHost, cfg: hostNet, handler: "nope", wantErr: errdefs.ErrInvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			handlers := tt.handlers
			if handlers == nil {
				handlers = map[string]config.Handler{"h": vmHandler, "hosty": {Kind: config.KindHost}}
			}
			m := &Manager{opts: Options{Runtime: config.Runtime{DefaultHandler: "h", Handlers: handlers, HostNamespacePods: tt.policy}}}
			h, err := m.placePod(tt.cfg, tt.handler)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Kind != tt.wantKind {
				t.Fatalf("kind %q, want %q", h.Kind, tt.wantKind)
			}
			if tt.handlers != nil && h.BootTimeout != hostHandler.BootTimeout {
				t.Fatalf("got %+v, want the configured host handler", h)
			}
		})
	}
}
