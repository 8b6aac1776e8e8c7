package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	// Registers the cgroup v2 device controller (an eBPF program) with libcontainer.
	_ "github.com/opencontainers/cgroups/devices"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// containerStateDir is libcontainer's state root in the guest.
const containerStateDir = "/run/cocoon/containers"

type container struct {
	id   string
	lc   *libcontainer.Container
	spec *specs.Spec
	init *process

	execs execTable
}

// engine owns the guest's containers and the processes run in the guest
// root, outside every container (guestexec.go).
type engine struct {
	mu         sync.Mutex
	containers map[string]*container
	guest      execTable
	// host is set in host mode (hostmode.go): a host pod's agent.
	host *hostPod
}

func newEngine() *engine {
	return &engine{containers: map[string]*container{}}
}

func notFound(kind, id string) error {
	return status.Errorf(codes.NotFound, "%s %q not found", kind, id)
}

func (e *engine) get(id string) (*container, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.containers[id]
	if !ok {
		return nil, notFound("container", id)
	}
	return c, nil
}

// create builds the container from its OCI spec and starts its init up to the
// point of exec: it exists (namespaces, cgroup, mounts) but runs nothing yet.
func (e *engine) create(req *agentapi.CreateContainerRequest) (err error) {
	id := req.GetContainerId()
	if id == "" || strings.ContainsAny(id, "/\x00") {
		return status.Errorf(codes.InvalidArgument, "bad container id %q", id)
	}
	var spec specs.Spec
	if err := json.Unmarshal(req.GetOciSpec(), &spec); err != nil {
		return status.Errorf(codes.InvalidArgument, "oci spec: %v", err)
	}
	if spec.Process == nil || spec.Root == nil {
		return status.Error(codes.InvalidArgument, "oci spec needs process and root")
	}
	e.mu.Lock()
	if _, exists := e.containers[id]; exists {
		e.mu.Unlock()
		return status.Errorf(codes.AlreadyExists, "container %q exists", id)
	}
	e.containers[id] = nil // reserve the id while we build it
	e.mu.Unlock()
	defer func() {
		if err != nil {
			e.mu.Lock()
			delete(e.containers, id)
			e.mu.Unlock()
		}
	}()

	stateDir := containerStateDir
	if e.host != nil {
		if err := e.host.prepareSpec(&spec); err != nil {
			return err
		}
		stateDir = e.host.stateDir
	}
	// The guest root is the initramfs, where pivot_root cannot work; the VM
	// boundary is the isolation, and containers still get their own mount ns.
	// On the host, libcontainer pivots as runc does.
	if spec.Linux != nil {
		dropUnenforceableHugepages(id, spec.Linux.Resources, hugetlbUsable())
	}
	steps := newStepLog("create", id)
	defer steps.done()
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:       id,
		NoPivotRoot:      e.host == nil,
		UseSystemdCgroup: e.host != nil && e.host.systemd,
		Spec:             &spec,
	})
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "oci spec: %v", err)
	}
	steps.mark("spec")
	lc, err := libcontainer.Create(stateDir, id, cfg)
	if err != nil {
		return status.Errorf(codes.Internal, "create container: %v", err)
	}
	steps.mark("libcontainer-create")
	c := &container{id: id, lc: lc, spec: &spec}
	p, err := newProcess(libcontainerProcess(spec.Process, true), req.GetTty(), req.GetStdin())
	if err != nil {
		_ = lc.Destroy()
		return status.Errorf(codes.Internal, "stdio: %v", err)
	}
	p.oomCheck = c.oomKilled
	if err := lc.Start(p.lp); err != nil {
		p.closeAll()
		_ = lc.Destroy()
		return status.Errorf(codes.Internal, "start container init: %v", err)
	}
	steps.mark("init-start")
	if err := p.started(); err != nil {
		_ = lc.Signal(unix.SIGKILL)
		_ = lc.Destroy()
		return status.Errorf(codes.Internal, "%v", err)
	}
	c.init = p
	go p.watch()
	e.mu.Lock()
	e.containers[id] = c
	e.mu.Unlock()
	return nil
}

func (e *engine) start(id string) error {
	c, err := e.get(id)
	if err != nil {
		return err
	}
	if st, _ := c.lc.Status(); st != libcontainer.Created {
		return status.Errorf(codes.FailedPrecondition, "container %q is %s, not created", id, st)
	}
	steps := newStepLog("start", id)
	defer steps.done()
	if err := c.lc.Exec(); err != nil {
		return status.Errorf(codes.Internal, "start container: %v", err)
	}
	steps.mark("exec")
	waitExecve(c.init)
	steps.mark("execve")
	return nil
}

// waitExecve returns once the container's init has replaced libcontainer's
// "init" with the user's program (or after a second). A stop signal sent
// before that is pending across execve and then discarded, because PID 1 of a
// namespace only receives signals it has a handler for: StopContainer right
// after StartContainer would wait its whole timeout for nothing.
func waitExecve(p *process) {
	pid, err := p.run.Pid()
	if err != nil {
		return
	}
	initArgs := os.Args[0] + "\x00init\x00"
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil || string(cmdline) != initArgs {
			return
		}
	}
}

// remove destroys the container; a running one only with force (killed first).
func (e *engine) remove(id string, force bool) error {
	c, err := e.get(id)
	if status.Code(err) == codes.NotFound {
		return nil
	}
	if err != nil {
		return err
	}
	if !c.init.exited() {
		if !force {
			return status.Errorf(codes.FailedPrecondition, "container %q is running", id)
		}
		c.killAll(unix.SIGKILL)
		select {
		case <-c.init.done:
		case <-time.After(10 * time.Second):
			return status.Errorf(codes.DeadlineExceeded, "container %q did not die", id)
		}
	}
	if err := c.lc.Destroy(); err != nil {
		return status.Errorf(codes.Internal, "destroy container: %v", err)
	}
	c.execs.closeAll()
	c.init.closeAll()
	e.mu.Lock()
	delete(e.containers, id)
	e.mu.Unlock()
	return nil
}

// killAll signals every process in the container's cgroup.
func (c *container) killAll(sig unix.Signal) {
	pids, err := c.lc.Processes()
	if err != nil || len(pids) == 0 {
		_ = c.lc.Signal(sig)
		return
	}
	for _, pid := range pids {
		_ = unix.Kill(pid, sig)
	}
}

// cgroupDir is the container's cgroup v2 directory.
func (c *container) cgroupDir() string {
	st, err := c.lc.State()
	if err != nil {
		return ""
	}
	if p, ok := st.CgroupPaths[""]; ok {
		return p
	}
	for _, p := range st.CgroupPaths {
		return p
	}
	return ""
}

// oomKilled reads the cgroup's oom_kill counter: memory.events on cgroup
// v2, memory.oom_control in the v1 memory hierarchy (a host pod on a v1 or
// hybrid host).
func (c *container) oomKilled() bool {
	st, err := c.lc.State()
	if err != nil {
		return false
	}
	if dir, ok := st.CgroupPaths["memory"]; ok {
		return readMemoryEvent(filepath.Join(dir, "memory.oom_control"), "oom_kill") > 0
	}
	return readMemoryEvent(filepath.Join(c.cgroupDir(), "memory.events"), "oom_kill") > 0
}

func readMemoryEvent(path, key string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	return 0
}

// process finds the init ("" exec id) or an exec process.
func (c *container) process(execID string) (*process, error) {
	if execID == "" {
		return c.init, nil
	}
	p, ok := c.execs.get(execID)
	if !ok {
		return nil, notFound("exec", c.id+"/"+execID)
	}
	return p, nil
}

func (e *engine) exec(req *agentapi.ExecProcessRequest) error {
	c, err := e.get(req.GetContainerId())
	if err != nil {
		return err
	}
	if req.GetExecId() == "" {
		return status.Error(codes.InvalidArgument, "exec id is empty")
	}
	var sp specs.Process
	if err := json.Unmarshal(req.GetProcess(), &sp); err != nil {
		return status.Errorf(codes.InvalidArgument, "process: %v", err)
	}
	if c.init.exited() {
		return status.Errorf(codes.FailedPrecondition, "container %q is not running", c.id)
	}
	p, err := newProcess(libcontainerProcess(&sp, false), req.GetTty(), req.GetStdin())
	if err != nil {
		return status.Errorf(codes.Internal, "stdio: %v", err)
	}
	return c.execs.start(req.GetExecId(), p, func() error { return c.lc.Run(p.lp) })
}

// execTable holds the exec processes of one container, or of the guest root.
type execTable struct {
	mu    sync.Mutex
	procs map[string]*process
}

func (t *execTable) get(execID string) (*process, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.procs[execID]
	return p, ok
}

// start registers p under execID, runs it with run and watches it; on any
// failure nothing stays registered and p's descriptors are closed.
func (t *execTable) start(execID string, p *process, run func() error) error {
	t.mu.Lock()
	if _, dup := t.procs[execID]; dup {
		t.mu.Unlock()
		p.closeAll()
		return status.Errorf(codes.AlreadyExists, "exec %q exists", execID)
	}
	if t.procs == nil {
		t.procs = map[string]*process{}
	}
	t.procs[execID] = p
	t.mu.Unlock()
	if err := run(); err != nil {
		p.closeAll()
		t.mu.Lock()
		delete(t.procs, execID)
		t.mu.Unlock()
		if _, ok := status.FromError(err); ok {
			return err // already says what went wrong
		}
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	if err := p.started(); err != nil {
		_ = p.run.Signal(unix.SIGKILL)
		return status.Errorf(codes.Internal, "%v", err)
	}
	go p.watch()
	return nil
}

// forgetGrace is how long an exec whose exit was reported stays for
// readers of its output that have not come yet (a variable for tests).
var forgetGrace = 5 * time.Second

// forget drops an exec once its exit has been reported; readers that are
// still draining its output keep their files open until EOF. The host asks
// for the output and the exit at once, so a reader may come after the exit
// was reported (a process that ends at once): the exec stays for
// forgetGrace so that reader gets every byte, then unread output goes.
func (t *execTable) forget(execID string) {
	time.AfterFunc(forgetGrace, func() { t.drop(execID) })
}

func (t *execTable) drop(execID string) {
	t.mu.Lock()
	p, ok := t.procs[execID]
	delete(t.procs, execID)
	t.mu.Unlock()
	if !ok {
		return
	}
	for i, f := range []*os.File{p.stdout, p.stderr} {
		if f != nil && !p.claimed[i].Load() {
			f.Close()
		}
	}
	if p.stdin != nil && p.tty == nil {
		p.stdin.Close()
	}
}

// closeAll releases the descriptors of every exec (their owner is gone).
func (t *execTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.procs {
		p.closeAll()
	}
}

func (e *engine) update(req *agentapi.UpdateContainerRequest) error {
	c, err := e.get(req.GetContainerId())
	if err != nil {
		return err
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(req.GetResources(), &res); err != nil {
		return status.Errorf(codes.InvalidArgument, "resources: %v", err)
	}
	dropUnenforceableHugepages(c.id, &res, hugetlbUsable())
	spec := *c.spec
	linux := *spec.Linux
	linux.Resources = &res
	spec.Linux = &linux
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: c.id, UseSystemdCgroup: e.host != nil && e.host.systemd, Spec: &spec}, nil)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "resources: %v", err)
	}
	cfg := c.lc.Config()
	// Device rules are set at creation and never change with an update.
	cg.Resources.Devices = cfg.Cgroups.Resources.Devices
	cfg.Cgroups.Resources = cg.Resources
	if err := c.lc.Set(cfg); err != nil {
		return status.Errorf(codes.Internal, "update cgroup: %v", err)
	}
	c.spec = &spec
	return nil
}

func errorf(code codes.Code, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, os.ErrNotExist) {
		code = codes.NotFound
	}
	return status.Error(code, fmt.Sprint(err))
}
