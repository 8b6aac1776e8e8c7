package agent

import (
	"time"

	cgmanager "github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/sirupsen/logrus"
)

// containerCgroupParent is where cocoond puts every container's cgroup
// (sandbox/containers.go: "/cocoon/<id>").
const containerCgroupParent = "/cocoon"

// warmCgroupName is the throwaway cgroup the warm-up creates and removes;
// a leading dot keeps it apart from every container id cocoond sends.
const warmCgroupName = ".warmup"

// newCgroupManager is cgroups' manager.New; tests replace it.
var newCgroupManager = cgmanager.New

// warmContainerCgroups does, once and in the background, the cgroup work a
// pod's first container would otherwise pay for (about 0.13 s of it under
// TCG): it creates the containers' parent cgroup with its controllers
// enabled, and sets up a throwaway child the way libcontainer sets up a
// container's, device filter included, which makes the cgroup library probe
// the kernel's eBPF features once for this process. The child is removed
// whatever happens; a failure only costs the first container that time.
func warmContainerCgroups() {
	start := time.Now()
	err := warmCgroups(containerCgroupParent + "/" + warmCgroupName)
	logrus.WithFields(logrus.Fields{"took": time.Since(start).String(), "error": err}).Debug("container cgroups warmed")
}

func warmCgroups(path string) error {
	spec := specconv.Example()
	spec.Linux.CgroupsPath = path
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: warmCgroupName, Spec: spec}, specconv.AllowedDevices)
	if err != nil {
		return err
	}
	m, err := newCgroupManager(cg)
	if err != nil {
		return err
	}
	if err := m.Apply(-1); err != nil { // -1: create the cgroup, move no process into it
		_ = m.Destroy()
		return err
	}
	err = m.Set(cg.Resources)
	if derr := m.Destroy(); err == nil {
		err = derr
	}
	return err
}
