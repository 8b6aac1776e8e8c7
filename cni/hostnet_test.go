package cni

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/cni/cnitest"
)

const (
	testBridge = "cocoon-t0"
	testSubnet = "10.199.0.0/24"
)

// realNet is a CNI network of the Debian plugins on a bridge of our own.
type realNet struct {
	confDir, stateDir, dataDir, netnsRoot string
}

// newRealNet writes a conflist (bridge + host-local, then more plugins)
// and registers the host's clean-up.
func newRealNet(t *testing.T, more ...string) *realNet {
	t.Helper()
	cnitest.Require(t)
	n := &realNet{confDir: t.TempDir(), stateDir: t.TempDir(), dataDir: t.TempDir(), netnsRoot: filepath.Join(t.TempDir(), "netns")}
	conf := cnitest.Conflist("cocoon-test0", testBridge, testSubnet, n.dataDir, more...)
	if err := os.WriteFile(filepath.Join(n.confDir, "10-test.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cnitest.RestoreHost(t, testBridge)
	return n
}

func (n *realNet) manager() *Manager {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return NewManager(Options{ConfDir: n.confDir, BinDirs: []string{cnitest.PluginDir}, StateDir: n.stateDir, Log: logrus.NewEntry(log)})
}

// assertNothingLeft checks that no trace of pod id is left on the host.
func (n *realNet) assertNothingLeft(t *testing.T, id string) {
	t.Helper()
	if ports := cnitest.BridgePorts(t, testBridge); len(ports) > 0 {
		t.Errorf("veths still on %s: %v", testBridge, ports)
	}
	if ips := cnitest.Allocated(n.dataDir); len(ips) > 0 {
		t.Errorf("host-local allocations left: %v", ips)
	}
	if _, err := os.Stat(statePath(n.stateDir, id)); !os.IsNotExist(err) {
		t.Errorf("state file left: %v", err)
	}
	if cached, _ := filepath.Glob(filepath.Join(n.stateDir, "cache", "results", "*"+id+"*")); len(cached) > 0 {
		t.Errorf("libcni cache left: %v", cached)
	}
	if rules := cnitest.NATRules(strings.TrimSuffix(testSubnet, "0/24")); len(rules) > 0 {
		t.Errorf("iptables rules for the pod left: %v", rules)
	}
}
