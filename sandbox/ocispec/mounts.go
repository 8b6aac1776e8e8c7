package ocispec

import (
	"path/filepath"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// defaultMounts are containerd's CRI defaults. /dev/shm is a 64 MiB tmpfs per
// container: kubelet and containerd make it one per pod, but here a caller
// that wants the pod's shm passes a mount for /dev/shm, which replaces this.
func defaultMounts(privileged bool) []specs.Mount {
	sysOpt, cgroupOpt := "ro", "ro"
	if privileged {
		// Privileged containers may write to sysfs and the cgroup tree.
		sysOpt, cgroupOpt = "rw", "rw"
	}
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", sysOpt}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", cgroupOpt}},
	}
}

// buildMounts merges the defaults with the caller's mounts and orders them so
// a parent is mounted before its children. It also returns the rootfs
// propagation a bidirectional mount needs ("" keeps libcontainer's rslave).
func buildMounts(given []Mount, privileged bool) ([]specs.Mount, string, error) {
	seen := map[string]bool{}
	var user []specs.Mount
	rootPropagation := ""
	for _, m := range given {
		if !filepath.IsAbs(m.Destination) {
			return nil, "", invalid("mount destination %q is not absolute", m.Destination)
		}
		dst := filepath.Clean(m.Destination)
		if dst == "/" {
			return nil, "", invalid("mount %q over the container's root", m.Source)
		}
		if seen[dst] {
			return nil, "", invalid("two mounts at %s", dst)
		}
		seen[dst] = true
		sm, err := specMount(m, dst)
		if err != nil {
			return nil, "", err
		}
		if m.Propagation == runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL {
			// Mounts made in the container can only flow back out if the
			// container's root is shared too.
			rootPropagation = "rshared"
		}
		user = append(user, sm)
	}

	var out []specs.Mount
	for _, d := range defaultMounts(privileged) {
		// A mount at a default's place replaces it; a caller's /dev replaces
		// everything the defaults put under /dev as well (containerd does).
		if seen[d.Destination] || (seen["/dev"] && strings.HasPrefix(d.Destination, "/dev/")) {
			continue
		}
		out = append(out, d)
	}
	out = append(out, user...)
	// Stable: mounts of equal depth keep their order (defaults first).
	sort.SliceStable(out, func(i, j int) bool { return depth(out[i].Destination) < depth(out[j].Destination) })
	return out, rootPropagation, nil
}

func depth(p string) int {
	p = filepath.Clean(p)
	if p == "/" {
		return 0
	}
	return strings.Count(p, "/")
}

func specMount(m Mount, dst string) (specs.Mount, error) {
	typ := m.Type
	if typ == "" {
		typ = "bind"
	}
	mode := "rw"
	if m.ReadOnly {
		mode = "ro"
	}
	if typ != "bind" {
		return specs.Mount{Destination: dst, Type: typ, Source: m.Source, Options: []string{"nosuid", "nodev", mode}}, nil
	}
	if !filepath.IsAbs(m.Source) {
		return specs.Mount{}, invalid("bind mount source %q for %s is not absolute", m.Source, dst)
	}
	var prop string
	switch m.Propagation {
	case runtimeapi.MountPropagation_PROPAGATION_PRIVATE:
		prop = "rprivate"
	case runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
		prop = "rslave"
	case runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL:
		prop = "rshared"
	default:
		return specs.Mount{}, invalid("mount %s: unknown propagation %v", dst, m.Propagation)
	}
	// rbind: volumes often hold mounts of their own (kubelet's projected
	// volumes, nested hostPaths) that the container must see too.
	return specs.Mount{Destination: dst, Type: "bind", Source: filepath.Clean(m.Source), Options: []string{"rbind", prop, mode}}, nil
}
