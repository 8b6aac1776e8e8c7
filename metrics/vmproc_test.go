package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cocoon-runtime/cocoon/metrics/metricstest"
	"github.com/cocoon-runtime/cocoon/sandbox"
	"github.com/cocoon-runtime/cocoon/vm"
)

// statLine builds a /proc/<pid>/stat line with the given command name,
// utime, stime and start time; the other fields are plausible filler.
func statLine(comm string, utime, stime, start uint64) string {
	f := make([]string, 50)
	for i := range f {
		f[i] = "0"
	}
	f[0], f[1], f[2] = "4242", "("+comm+")", "S"
	f[13], f[14], f[21] = strconv.FormatUint(utime, 10), strconv.FormatUint(stime, 10), strconv.FormatUint(start, 10)
	return strings.Join(f, " ") + "\n"
}

const statusFixture = "Name:\tqemu-system-x86\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t 2162232 kB\nVmSize:\t 2096696 kB\nVmRSS:\t  301812 kB\nRssAnon:\t   90120 kB\nThreads:\t7\n"

// TestReadProcUsage reads fake /proc entries the way procfs parses them.
func TestReadProcUsage(t *testing.T) {
	zombie := strings.Replace(statLine("qemu", 1, 2, 3), ") S ", ") Z ", 1)
	tests := []struct {
		name      string
		stat      string
		status    string
		wantStart uint64
		wantTicks uint64
		wantRSS   uint64
		wantErr   bool
	}{
		{name: "plain", stat: statLine("qemu-system-x86", 250, 50, 12345), status: statusFixture, wantStart: 12345, wantTicks: 300, wantRSS: 301812 * 1024},
		{name: "command with spaces and parentheses", stat: statLine("a) b (c", 1, 2, 7), status: statusFixture, wantStart: 7, wantTicks: 3, wantRSS: 301812 * 1024},
		{name: "no command name", stat: "4242 qemu S 1 2 3", status: statusFixture, wantErr: true},
		{name: "truncated", stat: "4242 (qemu) S 1 2 3", status: statusFixture, wantErr: true},
		{name: "non-numeric utime", stat: strings.Replace(statLine("q", 1, 2, 3), " 1 2 ", " x 2 ", 1), status: statusFixture, wantErr: true},
		{name: "zombie has no memory", stat: zombie, status: "Name:\tqemu\nState:\tZ (zombie)\nThreads:\t1\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "4242")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, "stat"), tt.stat)
			writeFile(t, filepath.Join(dir, "status"), tt.status)
			u, err := readProcUsage(filepath.Dir(dir), 4242)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (u.startTime != tt.wantStart || u.cpuTicks != tt.wantTicks || u.rssBytes != tt.wantRSS) {
				t.Fatalf("got %+v, want start %d cpu ticks %d rss %d", u, tt.wantStart, tt.wantTicks, tt.wantRSS)
			}
		})
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReadProcUsageSelf reads this test process, the one process sure to exist.
func TestReadProcUsageSelf(t *testing.T) {
	pid := os.Getpid()
	u, err := readProcUsage("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	start, err := vm.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if u.rssBytes == 0 || u.startTime != start {
		t.Fatalf("usage %+v, start time %d", u, start)
	}
	if _, err := readProcUsage(t.TempDir(), pid); !os.IsNotExist(err) {
		t.Fatalf("missing process: err = %v", err)
	}
}

// writeProc writes a fake /proc/<pid> with stat and status under dir.
func writeProc(t *testing.T, dir string, pid int, comm string, rssKB, utime, stime, start uint64) {
	t.Helper()
	p := filepath.Join(dir, strconv.Itoa(pid))
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	status := "Name:\t" + comm + "\nVmRSS:\t" + strconv.FormatUint(rssKB, 10) + " kB\n"
	for name, body := range map[string]string{"stat": statLine(comm, utime, stime, start), "status": status} {
		if err := os.WriteFile(filepath.Join(p, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func podWithVM(t *testing.T, id, name, namespace string, state sandbox.PodState, st *vm.State) sandbox.Pod {
	t.Helper()
	cfg, err := json.Marshal(map[string]any{"metadata": map[string]string{"name": name, "namespace": namespace, "uid": "u-" + name}})
	if err != nil {
		t.Fatal(err)
	}
	return sandbox.Pod{ID: id, Config: cfg, State: state, VM: st}
}

// writeChildren lists children in a fake /proc/<pid>/task/<pid>/children.
func writeChildren(t *testing.T, dir string, pid int, children ...int) {
	t.Helper()
	task := filepath.Join(dir, strconv.Itoa(pid), "task", strconv.Itoa(pid))
	if err := os.MkdirAll(task, 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, c := range children {
		fmt.Fprintf(&b, "%d ", c)
	}
	if err := os.WriteFile(filepath.Join(task, "children"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestVMProcessCollector(t *testing.T) {
	proc := t.TempDir()
	writeProc(t, proc, 100, "qemu-system-x86", 200000, 300, 100, 5000) // vmm of pod a
	writeProc(t, proc, 101, "virtiofsd", 3000, 10, 10, 5001)           // its two virtiofsd, summed
	writeProc(t, proc, 102, "virtiofsd", 1000, 5, 5, 5002)
	writeProc(t, proc, 103, "virtiofsd", 2000, 20, 10, 5003) // 101's sandboxed worker: counted with it
	writeChildren(t, proc, 101, 103)
	writeProc(t, proc, 200, "qemu-system-x86", 100000, 50, 50, 6000) // pod b's vmm; its virtiofsd is gone
	writeProc(t, proc, 300, "bash", 4000, 1, 1, 9999)                // pid 300 was reused: not pod c's vmm
	writeProc(t, proc, 400, "qemu-system-x86", 999, 1, 1, 7000)      // pod d is stopped
	store := &fakeStore{pods: []sandbox.Pod{
		podWithVM(t, "aaaa", "web", "default", sandbox.StateReady, &vm.State{Pid: 100, StartTime: 5000, Helpers: []vm.Process{
			{Name: "virtiofsd-cocoon", Pid: 101, StartTime: 5001}, {Name: "virtiofsd-extra", Pid: 102, StartTime: 5002},
		}}),
		podWithVM(t, "bbbb", "db", "prod", sandbox.StateReady, &vm.State{Pid: 200, StartTime: 6000, Helpers: []vm.Process{
			{Name: "virtiofsd-cocoon", Pid: 201, StartTime: 6001},
		}}),
		podWithVM(t, "cccc", "reused", "prod", sandbox.StateReady, &vm.State{Pid: 300, StartTime: 1234}),
		podWithVM(t, "dddd", "stopped", "prod", sandbox.StateNotReady, &vm.State{Pid: 400, StartTime: 7000}),
		podWithVM(t, "eeee", "novm", "prod", sandbox.StateReady, nil),
	}}
	c := &vmProcessCollector{store: store, procDir: proc}
	want := `
# HELP cocoon_vm_cpu_seconds_total CPU time (user + system) of a pod VM's host processes.
# TYPE cocoon_vm_cpu_seconds_total counter
cocoon_vm_cpu_seconds_total{pod_name="db",pod_namespace="prod",process="vmm",sandbox_id="bbbb"} 1
cocoon_vm_cpu_seconds_total{pod_name="web",pod_namespace="default",process="virtiofsd",sandbox_id="aaaa"} 0.6
cocoon_vm_cpu_seconds_total{pod_name="web",pod_namespace="default",process="vmm",sandbox_id="aaaa"} 4
# HELP cocoon_vm_memory_rss_bytes Resident memory of a pod VM's host processes.
# TYPE cocoon_vm_memory_rss_bytes gauge
cocoon_vm_memory_rss_bytes{pod_name="db",pod_namespace="prod",process="vmm",sandbox_id="bbbb"} 1.024e+08
cocoon_vm_memory_rss_bytes{pod_name="web",pod_namespace="default",process="virtiofsd",sandbox_id="aaaa"} 6.144e+06
cocoon_vm_memory_rss_bytes{pod_name="web",pod_namespace="default",process="vmm",sandbox_id="aaaa"} 2.048e+08
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestVMProcessCollectorLive points a pod's VM state at this test process
// and reads the real /proc.
func TestVMProcessCollectorLive(t *testing.T) {
	pid := os.Getpid()
	start, err := vm.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	store := &fakeStore{pods: []sandbox.Pod{podWithVM(t, "self", "me", "test", sandbox.StateReady, &vm.State{Pid: pid, StartTime: start})}}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(&vmProcessCollector{store: store, procDir: "/proc"})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	rss := metricstest.Find(families, "cocoon_vm_memory_rss_bytes", map[string]string{"sandbox_id": "self", "process": "vmm"})
	if rss == nil || rss.GetGauge().GetValue() <= 0 {
		t.Fatalf("no positive RSS for this process in %v", families)
	}
}
