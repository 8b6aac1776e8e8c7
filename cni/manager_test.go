package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// fakeCNI records calls and answers with canned results.
type fakeCNI struct {
	t                        *testing.T
	stateDir                 string
	addErr, delErr, chkErr   error
	result                   string // JSON; "" is a good default
	calls                    []string
	lastList                 string
	lastRT                   *libcni.RuntimeConf
	stateDuringAdd, ctxOnDel bool
}

func (f *fakeCNI) AddNetworkList(ctx context.Context, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	f.calls, f.lastList, f.lastRT = append(f.calls, "ADD"), l.Name, rt
	_, err := os.Stat(statePath(f.stateDir, rt.ContainerID))
	f.stateDuringAdd = err == nil
	if f.addErr != nil {
		return nil, f.addErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	js := f.result
	if js == "" {
		js = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,"address":"10.9.0.2/24","gateway":"10.9.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}`
	}
	return create.CreateFromBytes([]byte(js))
}

func (f *fakeCNI) CheckNetworkList(_ context.Context, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	f.calls, f.lastList, f.lastRT = append(f.calls, "CHECK"), l.Name, rt
	return f.chkErr
}

func (f *fakeCNI) DelNetworkList(ctx context.Context, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	f.calls, f.lastList, f.lastRT = append(f.calls, "DEL"), l.Name, rt
	f.ctxOnDel = ctx.Err() == nil
	return f.delErr
}

// fakeManager returns a Manager on a fake CNI with one network "pods" whose
// plugins exist (as empty scripts) in a temporary bin dir.
func fakeManager(t *testing.T, stateDir string) (*Manager, *fakeCNI, string) {
	t.Helper()
	bin, conf := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "bridge"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConf(t, conf, "pods")
	log := logrus.New()
	log.SetOutput(io.Discard)
	m := NewManager(Options{ConfDir: conf, BinDirs: []string{bin}, StateDir: stateDir, Log: logrus.NewEntry(log)})
	f := &fakeCNI{t: t, stateDir: stateDir}
	m.cni = f
	mac, _ := net.ParseMAC("02:00:00:00:00:09")
	m.readLink = func(string, string) (net.HardwareAddr, int, error) { return mac, 1450, nil }
	return m, f, conf
}

func writeConf(t *testing.T, dir, name string) {
	t.Helper()
	body := `{"cniVersion":"1.0.0","name":"` + name + `","plugins":[{"type":"bridge"}]}`
	if err := os.WriteFile(filepath.Join(dir, "10-pods.conflist"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func hasState(m *Manager, id string) bool {
	_, err := os.Stat(statePath(m.opts.StateDir, id))
	return err == nil
}

func TestManagerWithFakeCNI(t *testing.T) {
	pod := PodNetwork{ID: "pod1", Name: "web", Namespace: "default", UID: "u1", NetnsPath: "/nonexistent/ns"}
	tests := []struct {
		name string
		run  func(t *testing.T, m *Manager, f *fakeCNI, conf string)
	}{
		{"setup persists before ADD, teardown twice", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			res, err := m.Setup(context.Background(), pod)
			if err != nil {
				t.Fatal(err)
			}
			if !f.stateDuringAdd {
				t.Fatal("no state on disk while ADD ran")
			}
			if res.MAC.String() != "02:00:00:00:00:09" || res.MTU != 1450 || res.IPs[0].String() != "10.9.0.2/24" || res.Routes[0].GW.String() != "10.9.0.1" {
				t.Fatalf("result %+v", res)
			}
			if err := m.Check(context.Background(), "pod1"); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if err := m.Teardown(context.Background(), "pod1"); err != nil {
					t.Fatal(err)
				}
			}
			if strings.Join(f.calls, " ") != "ADD CHECK DEL" || hasState(m, "pod1") {
				t.Fatalf("calls %v, state left %v", f.calls, hasState(m, "pod1"))
			}
			// The netns is not a namespace: DEL gets none, as the spec allows.
			if f.lastRT.NetNS != "" || f.lastRT.ContainerID != "pod1" || f.lastRT.IfName != "eth0" {
				t.Fatalf("DEL runtime conf %+v", f.lastRT)
			}
		}},
		{"failed ADD is undone and leaves no state", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			f.addErr = errors.New("plugin type=\"bridge\" failed (add): boom")
			if _, err := m.Setup(context.Background(), pod); err == nil || !strings.Contains(err.Error(), "boom") {
				t.Fatalf("Setup: %v", err)
			}
			if strings.Join(f.calls, " ") != "ADD DEL" || hasState(m, "pod1") {
				t.Fatalf("calls %v, state left %v", f.calls, hasState(m, "pod1"))
			}
		}},
		{"failed undo keeps the state for Teardown", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			f.addErr, f.delErr = errors.New("add boom"), errors.New("del boom")
			_, err := m.Setup(context.Background(), pod)
			if err == nil || !strings.Contains(err.Error(), "add boom") || !strings.Contains(err.Error(), "del boom") || !hasState(m, "pod1") {
				t.Fatalf("Setup: %v, state %v", err, hasState(m, "pod1"))
			}
			if err := m.Teardown(context.Background(), "pod1"); err == nil || !hasState(m, "pod1") {
				t.Fatalf("Teardown with a failing DEL: %v", err)
			}
			f.delErr = nil
			if err := m.Teardown(context.Background(), "pod1"); err != nil || hasState(m, "pod1") {
				t.Fatalf("Teardown: %v, state %v", err, hasState(m, "pod1"))
			}
			if _, err := m.Result("pod1"); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("Result of a torn down pod: %v", err)
			}
		}},
		{"unusable result is undone", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			f.result = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}]}`
			if _, err := m.Setup(context.Background(), pod); err == nil || hasState(m, "pod1") || strings.Join(f.calls, " ") != "ADD DEL" {
				t.Fatalf("Setup: %v, calls %v", err, f.calls)
			}
		}},
		{"undo runs even when the caller's context ended", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := m.Setup(ctx, pod); !errors.Is(err, context.Canceled) {
				t.Fatalf("Setup: %v", err)
			}
			if !f.ctxOnDel || hasState(m, "pod1") {
				t.Fatalf("undo DEL had a live context %v, state left %v", f.ctxOnDel, hasState(m, "pod1"))
			}
		}},
		{"DEL errors about missing things are done", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			if _, err := m.Setup(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			f.delErr = errors.New(`plugin type="bridge" failed (delete): link "eth0" not found`)
			if err := m.Teardown(context.Background(), "pod1"); err != nil || hasState(m, "pod1") {
				t.Fatalf("Teardown: %v", err)
			}
		}},
		{"other DEL errors keep the state", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			if _, err := m.Setup(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			f.delErr = errors.New(`failed to find plugin "bridge" in path [/opt]`)
			if err := m.Teardown(context.Background(), "pod1"); err == nil || !hasState(m, "pod1") {
				t.Fatalf("Teardown: %v", err)
			}
		}},
		{"second Setup is AlreadyExists", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			if _, err := m.Setup(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Setup(context.Background(), pod); !errors.Is(err, errdefs.ErrAlreadyExists) {
				t.Fatalf("second Setup: %v", err)
			}
		}},
		{"no network: nothing runs, no state", func(t *testing.T, m *Manager, f *fakeCNI, conf string) {
			os.Remove(filepath.Join(conf, "10-pods.conflist"))
			if _, err := m.Setup(context.Background(), pod); !errors.Is(err, ErrNoNetwork) || len(f.calls) > 0 || hasState(m, "pod1") {
				t.Fatalf("Setup: %v, calls %v", err, f.calls)
			}
		}},
		{"unknown pods: Check NotFound, Teardown nil", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			if err := m.Check(context.Background(), "nope"); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("Check: %v", err)
			}
			if err := m.Teardown(context.Background(), "nope"); err != nil || len(f.calls) > 0 {
				t.Fatalf("Teardown: %v, calls %v", err, f.calls)
			}
		}},
		{"after a restart DEL uses the configuration ADD used", func(t *testing.T, m *Manager, f *fakeCNI, conf string) {
			want, err := m.Setup(context.Background(), pod)
			if err != nil {
				t.Fatal(err)
			}
			writeConf(t, conf, "renamed")
			m2, f2, _ := fakeManager(t, m.opts.StateDir)
			got, err := m2.Result("pod1")
			if err != nil || got.MAC.String() != want.MAC.String() || got.IPs[0] != want.IPs[0] || got.Routes[0] != want.Routes[0] {
				t.Fatalf("Result after restart: %+v, %v", got, err)
			}
			if err := m2.Teardown(context.Background(), "pod1"); err != nil || f2.lastList != "pods" || hasState(m2, "pod1") {
				t.Fatalf("Teardown: %v, DEL ran on %q", err, f2.lastList)
			}
			if got := f2.lastRT.Args; len(got) != 5 || got[2] != [2]string{"K8S_POD_NAME", "web"} {
				t.Fatalf("DEL args %v", got)
			}
		}},
		{"invalid pods", func(t *testing.T, m *Manager, f *fakeCNI, _ string) {
			for _, p := range []PodNetwork{{NetnsPath: "/x"}, {ID: "a/b", NetnsPath: "/x"}, {ID: "a"}} {
				if _, err := m.Setup(context.Background(), p); !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("Setup(%+v): %v", p, err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, f, conf := fakeManager(t, t.TempDir())
			tt.run(t, m, f, conf)
		})
	}
}

func TestRuntimeConf(t *testing.T) {
	base := PodNetwork{ID: "id1", Name: "n", Namespace: "ns", UID: "uid", NetnsPath: "/run/ns"}
	tests := []struct {
		name    string
		mod     func(*PodNetwork)
		caps    string // capabilityArgs as fmt prints them
		wantErr bool
	}{
		{name: "no ports, no CIDR: no capabilities", mod: func(*PodNetwork) {}, caps: "map[]"},
		{name: "ports: defaults, lower case, host port 0 skipped", mod: func(p *PodNetwork) {
			p.PortMappings = []PortMapping{
				{HostPort: 8080, ContainerPort: 80},
				{HostPort: 53, ContainerPort: 5353, Protocol: "UDP", HostIP: "127.0.0.1"},
				{ContainerPort: 9090, Protocol: "TCP"},
			}
		}, caps: "map[portMappings:[map[containerPort:80 hostPort:8080 protocol:tcp] map[containerPort:5353 hostIP:127.0.0.1 hostPort:53 protocol:udp]]]"},
		{name: "pod CIDR becomes ipRanges", mod: func(p *PodNetwork) { p.PodCIDR = "10.244.1.7/24" },
			caps: "map[ipRanges:[[map[subnet:10.244.1.0/24]]]]"},
		{name: "bad protocol", mod: func(p *PodNetwork) {
			p.PortMappings = []PortMapping{{HostPort: 1, ContainerPort: 1, Protocol: "icmp"}}
		}, wantErr: true},
		{name: "bad host IP", mod: func(p *PodNetwork) {
			p.PortMappings = []PortMapping{{HostPort: 1, ContainerPort: 1, HostIP: "localhost"}}
		}, wantErr: true},
		{name: "bad container port", mod: func(p *PodNetwork) { p.PortMappings = []PortMapping{{HostPort: 1}} }, wantErr: true},
		{name: "bad CIDR", mod: func(p *PodNetwork) { p.PodCIDR = "10.1.0.0" }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base
			tt.mod(&p)
			rt, err := runtimeConf(p)
			if tt.wantErr {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("want InvalidArgument, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(rt.CapabilityArgs); got != tt.caps {
				t.Fatalf("caps\n got %s\nwant %s", got, tt.caps)
			}
			want := [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "ns"}, {"K8S_POD_NAME", "n"}, {"K8S_POD_INFRA_CONTAINER_ID", "id1"}, {"K8S_POD_UID", "uid"}}
			if !equal(rt.Args, want) || rt.IfName != "eth0" || rt.ContainerID != "id1" || rt.NetNS != "/run/ns" {
				t.Fatalf("runtime conf %+v", rt)
			}
		})
	}
}

func TestAlreadyGone(t *testing.T) {
	for msg, want := range map[string]bool{
		`plugin type="bridge" failed (delete): Link not found`:                        true,
		`failed to Statfs "/run/x": no such file or directory`:                        true,
		`plugin type="portmap" failed (delete): chain CNI-DN-1 does not exist`:        true,
		`failed to find plugin "bridge" in path [/usr/lib/cni]`:                       false,
		`plugin type="host-local" failed (delete): failed to lock: permission denied`: false,
	} {
		if got := alreadyGone(errors.New(msg)); got != want {
			t.Errorf("alreadyGone(%q) = %v", msg, got)
		}
	}
}

func TestAttachedListsRecords(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"aaa.json", "bbb.json"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "cache"), 0o700); err != nil {
		t.Fatal(err)
	}
	ids, err := NewManager(Options{StateDir: dir}).Attached()
	if err != nil || strings.Join(ids, ",") != "aaa,bbb" {
		t.Errorf("Attached = %v, %v; want aaa,bbb (libcni's cache dir is not a pod)", ids, err)
	}
	if ids, err := NewManager(Options{StateDir: filepath.Join(dir, "missing")}).Attached(); err != nil || len(ids) != 0 {
		t.Errorf("no state dir yet: %v, %v", ids, err)
	}
}
