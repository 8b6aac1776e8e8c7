// Package podcgroup puts a pod's host processes in the cgroup kubelet names
// for the pod (the CRI cgroup_parent), so kubelet's QoS, eviction and
// cAdvisor stats see what the pod really costs on the host.
//
// Each pod gets a child of that parent, cocoon-<pod id> (with the systemd
// driver the scope cocoon-<pod id>.scope in kubelet's slice), as runc and
// containerd put a sandbox's processes in a child of the pod cgroup:
// kubelet's accounting of the parent includes them, and cocoond's own
// processes stay distinguishable from kubelet's.
//
// With cgroupfs the pod cgroup holds no process itself, only cgroups: the
// pod's own processes (a VM pod's VMM and virtiofsd, a host pod's agent) are
// in its leaf cocoon-<pod id>/sandbox, a host pod's containers in
// cocoon-<pod id>/<container id>. cgroup v2 lets a cgroup give controllers
// to its children only while it holds no process ("no internal processes"),
// so an agent in the pod cgroup itself would leave its containers' cgroups
// without memory or cpu files. Killing or removing the pod cgroup still
// takes everything below it. A systemd scope is a leaf already (its slice
// holds only units): the pod's processes are in the scope, a host pod's
// containers in scopes beside it.
//
// Both cgroup drivers (cgroupfs, systemd) and every cgroup layout (v2, v1,
// hybrid) are handled by github.com/opencontainers/cgroups, runc's library.
package podcgroup

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/opencontainers/cgroups/systemd"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// The cgroup drivers, as kubelet and [daemon] cgroup_driver name them.
const (
	Cgroupfs = "cgroupfs"
	Systemd  = "systemd"
)

// Parents used when the CRI request names no cgroup_parent (crictl without
// one): a cocoon-owned parent beside kubelet's, never cocoond's own cgroup.
const (
	DefaultCgroupfsParent = "/cocoon"
	DefaultSystemdParent  = "cocoon.slice"
)

// leafPrefix starts the name of every pod cgroup cocoond makes; Recover
// finds strays by it.
const leafPrefix = "cocoon-"

// scopePrefix is the systemd scope prefix: the unit is cocoon-<pod id>.scope.
const scopePrefix = "cocoon"

// Ref names one pod's cgroup. The pod record keeps it, so Stop and Recover
// find the cgroup whatever the configuration says by then.
type Ref struct {
	Driver string `json:"driver"`
	// Parent is kubelet's cgroup_parent (a path with cgroupfs, a slice name
	// with systemd), or the default parent.
	Parent string `json:"parent"`
	// PodID names the leaf: cocoon-<pod id> (a scope with systemd).
	PodID string `json:"podID"`
}

// For derives the pod cgroup of podID under kubelet's parent. A parent in the
// other driver's shape means kubelet's cgroupDriver and cocoond's
// cgroup_driver disagree: the error says so rather than making a cgroup
// kubelet never looks at.
func For(driver, parent, podID string) (Ref, error) {
	if podID == "" || strings.ContainsAny(podID, "/-.") {
		return Ref{}, fmt.Errorf("%w: pod id %q cannot name a cgroup", errdefs.ErrInvalidArgument, podID)
	}
	switch driver {
	case Cgroupfs:
		if parent == "" {
			parent = DefaultCgroupfsParent
		}
		if strings.HasSuffix(parent, ".slice") && !strings.Contains(parent, "/") {
			return Ref{}, fmt.Errorf("%w: cgroup_parent %q is a systemd slice but cocoond's cgroup_driver is cgroupfs: set [daemon] cgroup_driver to kubelet's cgroupDriver", errdefs.ErrInvalidArgument, parent)
		}
		if !path.IsAbs(parent) || path.Clean(parent) != parent || strings.Contains(parent, "..") {
			return Ref{}, fmt.Errorf("%w: cgroup_parent %q is not a clean absolute cgroup path", errdefs.ErrInvalidArgument, parent)
		}
	case Systemd:
		if parent == "" {
			parent = DefaultSystemdParent
		}
		if strings.HasPrefix(parent, "/") {
			return Ref{}, fmt.Errorf("%w: cgroup_parent %q is a cgroupfs path but cocoond's cgroup_driver is systemd: set [daemon] cgroup_driver to kubelet's cgroupDriver", errdefs.ErrInvalidArgument, parent)
		}
		if _, err := systemd.ExpandSlice(parent); err != nil {
			return Ref{}, fmt.Errorf("%w: cgroup_parent: %v", errdefs.ErrInvalidArgument, err)
		}
	default:
		return Ref{}, fmt.Errorf("%w: cgroup driver %q (want cgroupfs or systemd)", errdefs.ErrInvalidArgument, driver)
	}
	return Ref{Driver: driver, Parent: parent, PodID: podID}, nil
}

// SandboxLeaf names the child of a cgroupfs pod cgroup that holds the pod's
// own processes. Container IDs are 64 hex digits: no container takes it.
const SandboxLeaf = "sandbox"

// Leaf is the pod cgroup's own directory name.
func (r Ref) Leaf() string {
	if r.Driver == Systemd {
		return scopePrefix + "-" + r.PodID + ".scope"
	}
	return leafPrefix + r.PodID
}

// Path is the pod cgroup's path below a hierarchy's root, as
// /proc/<pid>/cgroup shows it.
func (r Ref) Path() (string, error) {
	parent := r.Parent
	if r.Driver == Systemd {
		p, err := systemd.ExpandSlice(r.Parent)
		if err != nil {
			return "", err
		}
		parent = p
	}
	return filepath.Join(parent, r.Leaf()), nil
}

// ProcsPath is where the pod's own processes go, below a hierarchy's root:
// the sandbox leaf of a cgroupfs pod cgroup, the scope itself with systemd.
func (r Ref) ProcsPath() (string, error) {
	p, err := r.Path()
	if err != nil || r.Driver == Systemd {
		return p, err
	}
	return path.Join(p, SandboxLeaf), nil
}

// String is the path, for logs and errors.
func (r Ref) String() string {
	p, err := r.Path()
	if err != nil {
		return r.Parent + "/" + r.Leaf()
	}
	return p
}

// refFromPath is the inverse of Path for a directory found below a
// hierarchy's root, or false when the directory is no pod cgroup of ours.
func refFromPath(rel string) (Ref, bool) {
	rel = path.Clean("/" + rel)
	dir, leaf := path.Split(rel)
	dir = path.Clean(dir)
	if id, ok := strings.CutSuffix(leaf, ".scope"); ok {
		id, ok = strings.CutPrefix(id, scopePrefix+"-")
		slice := path.Base(dir)
		if dir == "/" {
			slice = "-.slice"
		}
		if !ok || !isPodID(id) || !strings.HasSuffix(slice, ".slice") {
			return Ref{}, false
		}
		return Ref{Driver: Systemd, Parent: slice, PodID: id}, true
	}
	id, ok := strings.CutPrefix(leaf, leafPrefix)
	if !ok || !isPodID(id) {
		return Ref{}, false
	}
	return Ref{Driver: Cgroupfs, Parent: dir, PodID: id}, true
}

// isPodID reports whether s looks like a pod ID cocoond makes (64 hex),
// so a sweep never takes another tool's cgroup that happens to start with
// "cocoon-".
func isPodID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
