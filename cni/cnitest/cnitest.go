// Package cnitest helps tests that run the real CNI plugins on a host: a
// conflist on a bridge of the test's own, leak checks, and putting back what
// the plugins change on the host outside that bridge.
package cnitest

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// PluginDir is where Debian's containernetworking-plugins live.
const PluginDir = "/usr/lib/cni"

// Require skips the test unless it runs as root with the plugins and
// iptables (portmap's backend) installed.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces, veth, bridges, tc, iptables)")
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback", "tuning"} {
		if _, err := os.Stat(filepath.Join(PluginDir, p)); err != nil {
			t.Skipf("skipping: CNI plugin %s missing in %s (apt install containernetworking-plugins)", p, PluginDir)
		}
	}
	if _, err := exec.LookPath("iptables-save"); err != nil {
		t.Skip("skipping: iptables missing (the portmap plugin needs it)")
	}
}

// Conflist is a network of the bridge plugin (gateway and default route,
// no masquerade) with host-local IPAM keeping its files in dataDir,
// followed by more plugins (JSON objects).
func Conflist(name, bridge, subnet, dataDir string, more ...string) string {
	plugins := append([]string{`{"type":"bridge","bridge":"` + bridge + `","isGateway":true,"isDefaultGateway":true,"ipMasq":false,
		"ipam":{"type":"host-local","ranges":[[{"subnet":"` + subnet + `"}]],"dataDir":"` + dataDir + `"}}`}, more...)
	return `{"cniVersion":"1.0.0","name":"` + name + `","plugins":[` + strings.Join(plugins, ",") + `]}`
}

// PortmapAndLoopback completes a Conflist the way a node's usually is.
const PortmapAndLoopback = `{"type":"portmap","capabilities":{"portMappings":true},"snat":true},{"type":"loopback"}`

// RestoreHost registers the clean-up of what the plugins change on the
// host: the test's bridge (the bridge plugin never deletes it), ip_forward
// (it enables forwarding for a gateway; left on while another bridge has
// pods, whose traffic may need it), portmap's top-level nat chains
// and jumps, and the nat tables iptables-nft creates on first use (portmap
// probes the IPv6 one even for IPv4 pods). Chains and tables are removed
// only if they were not there before and hold no rules of anyone else.
func RestoreHost(t testing.TB, bridge string) {
	const fwd = "/proc/sys/net/ipv4/ip_forward"
	before, _ := os.ReadFile(fwd)
	nat, _ := exec.Command("iptables-save", "-t", "nat").Output()
	hadChains := strings.Contains(string(nat), ":CNI-HOSTPORT-")
	tables := nftTables()
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
		if others := otherPods(t, bridge); len(before) > 0 && len(others) == 0 {
			_ = os.WriteFile(fwd, before, 0o644)
		} else if len(others) > 0 {
			t.Logf("ip_forward left as it is: other bridges have pods (%v)", others)
		}
		if !hadChains {
			removePortmapChains(t)
		}
		for fam, save := range map[string]string{"ip": "iptables-save", "ip6": "ip6tables-save"} {
			if tables["table "+fam+" nat"] || !nftTables()["table "+fam+" nat"] {
				continue
			}
			out, err := exec.Command(save, "-t", "nat").Output()
			if err != nil || strings.Contains(string(out), "\n-A ") || strings.Count(string(out), "\n:") > 4 {
				continue
			}
			if out, err := exec.Command("nft", "delete", "table", fam, "nat").CombinedOutput(); err != nil {
				t.Logf("nft delete table %s nat: %v %s", fam, err, out)
			}
		}
	})
}

// BridgePorts lists the links enslaved to bridge (the pods' host veths).
func BridgePorts(t testing.TB, bridge string) []string {
	t.Helper()
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// otherPods lists the bridges other than ours that have ports: another
// runtime's pods on this host.
func otherPods(t testing.TB, ours string) []string {
	links, _ := netlink.LinkList()
	var out []string
	for _, l := range links {
		if _, ok := l.(*netlink.Bridge); ok && l.Attrs().Name != ours && len(BridgePorts(t, l.Attrs().Name)) > 0 {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// Allocated lists the IPs host-local holds (one file per IP) in dataDir.
func Allocated(dataDir string) []string {
	files, _ := filepath.Glob(filepath.Join(dataDir, "*", "*"))
	var ips []string
	for _, f := range files {
		if _, err := netip.ParseAddr(filepath.Base(f)); err == nil {
			ips = append(ips, filepath.Base(f))
		}
	}
	return ips
}

// NATRules returns the nat table's rules that mention s (a pod IP, a port).
func NATRules(s string) []string {
	out, _ := exec.Command("iptables-save", "-t", "nat").Output()
	var rules []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-A ") && strings.Contains(l, s) {
			rules = append(rules, l)
		}
	}
	return rules
}

// nftTables lists the host's nftables tables ("table ip nat"); none
// without the nft tool.
func nftTables() map[string]bool {
	out, _ := exec.Command("nft", "list", "tables").Output()
	tables := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			tables[l] = true
		}
	}
	return tables
}

func removePortmapChains(t testing.TB) {
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil || strings.Contains(string(out), "-A CNI-HOSTPORT-DNAT ") {
		return // another runtime's pods still use them
	}
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, ":CNI-HOSTPORT-"):
			chains = append(chains, strings.Fields(line[1:])[0])
		case strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-A CNI-") && strings.Contains(line, "-j CNI-HOSTPORT-"):
			args := append([]string{"-t", "nat", "-D"}, splitArgs(line[3:])...)
			if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
				t.Logf("iptables %v: %v %s", args, err, out)
			}
		}
	}
	for _, op := range []string{"-F", "-X"} {
		for _, c := range chains {
			if out, err := exec.Command("iptables", "-t", "nat", op, c).CombinedOutput(); err != nil {
				t.Logf("iptables %s %s: %v %s", op, c, err, out)
			}
		}
	}
}

// splitArgs splits an iptables-save rule, keeping "quoted words" whole.
func splitArgs(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, word := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, word = !quoted, true
		case r == ' ' && !quoted:
			if word {
				out = append(out, cur.String())
			}
			cur.Reset()
			word = false
		default:
			cur.WriteRune(r)
			word = true
		}
	}
	if word {
		out = append(out, cur.String())
	}
	return out
}
