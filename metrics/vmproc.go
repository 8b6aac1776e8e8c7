package metrics

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"

	"github.com/cocoon-runtime/cocoon/sandbox"
	"github.com/cocoon-runtime/cocoon/vm"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture cocoond runs on.
const clockTicks = 100

var (
	vmLabels  = []string{"sandbox_id", "pod_name", "pod_namespace", "process"}
	vmRSSDesc = prometheus.NewDesc(namespace+"_vm_memory_rss_bytes", "Resident memory of a pod VM's host processes.", vmLabels, nil)
	vmCPUDesc = prometheus.NewDesc(namespace+"_vm_cpu_seconds_total", "CPU time (user + system) of a pod VM's host processes.", vmLabels, nil)
)

// Values of the process label.
const (
	processVMM  = "vmm"
	processVirt = "virtiofsd"
)

// procUsage is what /proc says about one process.
type procUsage struct {
	startTime uint64 // clock ticks since boot: with the pid, names the process
	cpuTicks  uint64 // user + system
	rssBytes  uint64
}

// readProcUsage reads /proc/<pid>/stat and /proc/<pid>/status under procDir.
// A missing process is the os.ErrNotExist error; a zombie is an error too, as
// it has no memory to report.
func readProcUsage(procDir string, pid int) (procUsage, error) {
	fs, err := procfs.NewFS(procDir)
	if err != nil {
		return procUsage{}, err
	}
	p, err := fs.Proc(pid)
	if err != nil {
		return procUsage{}, err
	}
	stat, err := p.Stat()
	if err != nil {
		return procUsage{}, err
	}
	if stat.State == "Z" {
		return procUsage{}, fmt.Errorf("pid %d is a zombie", pid)
	}
	status, err := p.NewStatus()
	if err != nil {
		return procUsage{}, err
	}
	return procUsage{startTime: stat.Starttime, cpuTicks: uint64(stat.UTime + stat.STime), rssBytes: status.VmRSS}, nil
}

// vmProcessCollector reports the RSS and CPU time of every ready pod's VM
// processes (the VMM and its virtiofsd helpers) on each scrape. It reads the
// pids from the pod's persisted VM state, which also carries each process's
// start time, so a pid the kernel reused for something else is never
// reported as the VM. A process that is gone is skipped.
type vmProcessCollector struct {
	store   Sandboxes
	procDir string
}

func (c *vmProcessCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- vmRSSDesc
	ch <- vmCPUDesc
}

// vmSeries is one label set's sums (a pod may have several virtiofsd).
type vmSeries struct {
	labels   []string
	rss      uint64
	cpuTicks uint64 // summed as integers, converted once
}

func (c *vmProcessCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.store.Pods() {
		if p.State != sandbox.StateReady || p.VM == nil {
			continue
		}
		md := p.PodConfig().GetMetadata()
		byKind := map[string]*vmSeries{}
		var order []string
		procs := append([]vm.Process{{Name: processVMM, Pid: p.VM.Pid, StartTime: p.VM.StartTime}}, p.VM.Helpers...)
		for _, proc := range procs {
			u, err := readProcUsage(c.procDir, proc.Pid)
			if err != nil || u.startTime != proc.StartTime {
				continue // gone, or the pid now belongs to another process
			}
			kind := processKind(proc.Name)
			s, ok := byKind[kind]
			if !ok {
				s = &vmSeries{labels: []string{p.ID, md.GetName(), md.GetNamespace(), kind}}
				byKind[kind] = s
				order = append(order, kind)
			}
			s.rss += u.rssBytes
			s.cpuTicks += u.cpuTicks
			// virtiofsd does its work in a child it forks into its sandbox.
			for _, child := range vm.ChildPids(c.procDir, proc.Pid) {
				if cu, err := readProcUsage(c.procDir, child); err == nil {
					s.rss += cu.rssBytes
					s.cpuTicks += cu.cpuTicks
				}
			}
		}
		for _, kind := range order {
			s := byKind[kind]
			ch <- prometheus.MustNewConstMetric(vmRSSDesc, prometheus.GaugeValue, float64(s.rss), s.labels...)
			ch <- prometheus.MustNewConstMetric(vmCPUDesc, prometheus.CounterValue, float64(s.cpuTicks)/clockTicks, s.labels...)
		}
	}
}

// processKind maps a helper's name ("virtiofsd-cocoon") to its label value.
func processKind(name string) string {
	if strings.HasPrefix(name, processVirt) {
		return processVirt
	}
	return name
}
