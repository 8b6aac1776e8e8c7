package hostcheck

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// podControllers are the controllers kubelet's pod accounting (QoS,
// eviction, cAdvisor stats) reads from the pod cgroups cocoond puts each
// VM's processes in; cpuacct is where cgroup v1 keeps CPU usage.
var podControllers = []string{"cpu", "cpuacct", "memory", "pids"}

// cgroupMount is one mounted cgroup hierarchy.
type cgroupMount struct {
	point string
	v2    bool
	// controllers are a v1 hierarchy's (from its super options) or the
	// v2 hierarchy's (cgroup.controllers).
	controllers []string
}

// checkCgroup checks that every controller pod accounting needs is mounted,
// in the v2 hierarchy or in v1 ones: runc's cgroups library puts pod cgroups
// in both on a hybrid host. The systemd driver needs systemd as init.
func (h *Host) checkCgroup(driver string) Result {
	const name = "cgroups"
	mounts, err := cgroupMounts(filepath.Join(h.ProcDir, "self", "mountinfo"))
	if err != nil {
		return problem(Warn, name, "mount /proc", "reading mounts: %v", err)
	}
	have := map[string]string{} // controller → where
	var layout []string
	v1 := 0
	for _, m := range mounts {
		where := "v1"
		if m.v2 {
			where = "v2"
			layout = append(layout, "v2 at "+m.point)
		} else {
			v1++
		}
		for _, c := range m.controllers {
			if _, ok := have[c]; !ok {
				have[c] = where
			}
		}
	}
	if v1 > 0 {
		layout = append(layout, fmt.Sprintf("%d v1 hierarchies", v1))
	}
	if have["cpu"] == "v2" {
		have["cpuacct"] = "v2" // v2 keeps CPU usage in cpu.stat
	}
	var missing, inV1 []string
	for _, c := range podControllers {
		switch have[c] {
		case "":
			missing = append(missing, c)
		case "v1":
			inV1 = append(inV1, c)
		}
	}
	if len(missing) > 0 {
		return problem(Warn, name, "enable the missing controllers (boot with cgroup v2: systemd.unified_cgroup_hierarchy=1)",
			"no hierarchy has %s (mounted: %s): kubelet cannot account pods' VMs for them", strings.Join(missing, ", "), orNone(layout))
	}
	if driver == "systemd" {
		if _, err := os.Stat(h.SystemdDir); err != nil {
			return problem(Fail, name, "set [daemon] cgroup_driver = \"cgroupfs\" (and kubelet's cgroupDriver to match), or run systemd",
				"cgroup_driver is systemd but systemd is not running (%v): cocoond refuses to start", err)
		}
	}
	detail := "pod cgroups with the " + driver + " driver; "
	if len(inV1) > 0 {
		// kubelet 1.35+ refuses cgroup v1 unless told otherwise.
		return ok(name, "%s%s in cgroup v1 hierarchies (hybrid or v1 host: kubelet needs failCgroupV1: false); mounted: %s",
			detail, strings.Join(inV1, ", "), strings.Join(layout, ", "))
	}
	return ok(name, "%scgroup v2 with %s; mounted: %s", detail, strings.Join(podControllers, ", "), strings.Join(layout, ", "))
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// cgroupMounts lists the cgroup hierarchies mounted in a mountinfo file.
func cgroupMounts(mountinfo string) ([]cgroupMount, error) {
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		return nil, err
	}
	var mounts []cgroupMount
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+3 >= len(fields) {
			continue
		}
		m := cgroupMount{point: unescapeMountPath(fields[4])}
		switch fields[sep+1] {
		case "cgroup2":
			m.v2 = true
			if data, err := os.ReadFile(filepath.Join(m.point, "cgroup.controllers")); err == nil {
				m.controllers = strings.Fields(string(data))
			}
		case "cgroup":
			for _, opt := range strings.Split(fields[sep+3], ",") {
				if opt != "rw" && opt != "ro" && !strings.Contains(opt, "=") {
					m.controllers = append(m.controllers, opt)
				}
			}
		default:
			continue
		}
		mounts = append(mounts, m)
	}
	return mounts, sc.Err()
}

// cgroup2Mounts lists the mount points of cgroup2 filesystems in a mountinfo file.
func cgroup2Mounts(mountinfo string) ([]string, error) {
	all, err := cgroupMounts(mountinfo)
	var out []string
	for _, m := range all {
		if m.v2 {
			out = append(out, m.point)
		}
	}
	return out, err
}
