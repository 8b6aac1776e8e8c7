package ocispec

import (
	"strings"

	"github.com/moby/sys/capability"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// allCapabilities lists the Linux capabilities moby/sys/capability knows,
// by number (index = value). Privileged containers get all of them; results
// are ordered this way. The list is the library's, not the host kernel's:
// containers run on the guest kernel, which checks what it supports.
var allCapabilities = func() []string {
	known := capability.ListKnown()
	out := make([]string, len(known))
	for _, c := range known {
		out[c] = "CAP_" + strings.ToUpper(c.String())
	}
	return out
}()

// DefaultCapabilities is containerd's (and Docker's) default set.
var DefaultCapabilities = []string{
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FSETID",
	"CAP_FOWNER",
	"CAP_MKNOD",
	"CAP_NET_RAW",
	"CAP_SETGID",
	"CAP_SETUID",
	"CAP_SETFCAP",
	"CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT",
	"CAP_KILL",
	"CAP_AUDIT_WRITE",
}

var capIndex = func() map[string]int {
	m := make(map[string]int, len(allCapabilities))
	for i, c := range allCapabilities {
		m[c] = i
	}
	return m
}()

// capSet is a set of capability numbers.
type capSet map[int]bool

func (s capSet) list() []string {
	out := []string{}
	for i, c := range allCapabilities {
		if s[i] {
			out = append(out, c)
		}
	}
	return out
}

func isAll(name string) bool { return strings.EqualFold(strings.TrimSpace(name), "ALL") }

// capNumber accepts "chown", "CHOWN", "cap_chown" and "CAP_CHOWN".
func capNumber(name string) (int, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(n, "CAP_") {
		n = "CAP_" + n
	}
	i, ok := capIndex[n]
	if !ok {
		return 0, invalid("unknown capability %q", name)
	}
	return i, nil
}

// capabilities applies CRI's add/drop on the default set the way containerd
// does: "ALL" in add starts from every capability, "ALL" in drop starts from
// none (drop wins), then single adds, then single drops. Ambient capabilities
// are raised in every set, since the kernel only keeps an ambient capability
// that is also permitted and inheritable.
func capabilities(c *runtimeapi.Capability, privileged bool) (*specs.LinuxCapabilities, error) {
	set := capSet{}
	base := DefaultCapabilities
	if privileged {
		base = allCapabilities
	}
	for _, name := range base {
		set[capIndex[name]] = true
	}
	for _, name := range c.GetAddCapabilities() {
		if isAll(name) {
			for i := range allCapabilities {
				set[i] = true
			}
		}
	}
	for _, name := range c.GetDropCapabilities() {
		if isAll(name) {
			set = capSet{}
		}
	}
	for _, name := range c.GetAddCapabilities() {
		if isAll(name) {
			continue
		}
		i, err := capNumber(name)
		if err != nil {
			return nil, err
		}
		set[i] = true
	}
	for _, name := range c.GetDropCapabilities() {
		if isAll(name) {
			continue
		}
		i, err := capNumber(name)
		if err != nil {
			return nil, err
		}
		delete(set, i)
	}
	ambient := capSet{}
	for _, name := range c.GetAddAmbientCapabilities() {
		if isAll(name) {
			return nil, invalid("ambient capabilities must be named; \"ALL\" would make any user root")
		}
		i, err := capNumber(name)
		if err != nil {
			return nil, err
		}
		ambient[i] = true
		set[i] = true
	}
	list := set.list()
	return &specs.LinuxCapabilities{
		Bounding:    list,
		Effective:   append([]string{}, list...),
		Permitted:   append([]string{}, list...),
		Inheritable: ambient.list(),
		Ambient:     ambient.list(),
	}, nil
}
