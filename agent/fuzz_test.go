package agent

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/opencontainers/runc/libcontainer/configs/validate"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// FuzzAgentRequests decodes what the host sends the agent: the protobuf
// request (as ttRPC's codec does, with proto.Unmarshal), then the JSON OCI
// document it carries (spec, process, resources) into what libcontainer
// takes. Wherever the agent's own handler refuses before touching the guest
// (bad ids, bad JSON, no process or root, a container that is not running)
// the real handler runs and must answer InvalidArgument, NotFound or
// FailedPrecondition, never panic; past that point (libcontainer.Create,
// cgroup writes, a guest exec) the test runs the same conversions the
// handler does, without their effects, and checks what they produce.
func FuzzAgentRequests(f *testing.F) {
	spec := specconv.Example()
	spec.Root.Path = "/run/cocoon/share/c1/rootfs"
	spec.Process.User.AdditionalGids = []uint32{10, 11}
	spec.Process.ConsoleSize = &specs.Box{Height: 24, Width: 80}
	specJSON, _ := json.Marshal(spec)
	procJSON, _ := json.Marshal(spec.Process)
	period, quota, limit := uint64(100000), int64(50000), int64(64<<20)
	resJSON, _ := json.Marshal(specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Period: &period, Quota: &quota, Cpus: "0-1"},
		Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit},
		Pids:   &specs.LinuxPids{Limit: &quota}, Unified: map[string]string{"memory.high": "1000000"},
	})
	add := func(kind uint8, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(kind, b)
	}
	add(0, &agentapi.CreateContainerRequest{ContainerId: "c1", OciSpec: specJSON, Stdin: true})
	add(0, &agentapi.CreateContainerRequest{ContainerId: "c1", OciSpec: []byte(`{"process":{"args":["sh"]}}`)})
	add(0, &agentapi.CreateContainerRequest{ContainerId: "../c1", OciSpec: specJSON})
	add(1, &agentapi.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: procJSON, Tty: true})
	add(1, &agentapi.ExecProcessRequest{ExecId: "g1", Process: []byte(`{"args":["sh","-c","true"],"env":["PATH=/bin"],"cwd":"/"}`), GuestRoot: true})
	add(1, &agentapi.ExecProcessRequest{ContainerId: "c1", ExecId: "e2", Process: []byte(`{"args":`)})
	add(2, &agentapi.UpdateContainerRequest{ContainerId: "c1", Resources: resJSON})
	add(2, &agentapi.UpdateContainerRequest{ContainerId: "c1", Resources: []byte(`{"cpu":{"shares":-1}}`)})

	f.Fuzz(func(t *testing.T, kind uint8, wire []byte) {
		switch kind % 3 {
		case 0:
			var req agentapi.CreateContainerRequest
			if proto.Unmarshal(wire, &req) == nil {
				fuzzCreate(t, &req)
			}
		case 1:
			var req agentapi.ExecProcessRequest
			if proto.Unmarshal(wire, &req) == nil {
				fuzzExec(t, &req)
			}
		case 2:
			var req agentapi.UpdateContainerRequest
			if proto.Unmarshal(wire, &req) == nil {
				fuzzUpdate(t, &req)
			}
		}
	})
}

// wantRefusal asserts err is a gRPC status with one of the codes a malformed
// request may get.
func wantRefusal(t *testing.T, what string, err error, codesOK ...codes.Code) {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok || !slices.Contains(codesOK, st.Code()) {
		t.Fatalf("%s: got %v, want one of %v", what, err, codesOK)
	}
}

// exitedEngine holds container c1 whose init has exited: exec decodes its
// request and then refuses, touching nothing.
func exitedEngine() *engine {
	e := newEngine()
	done := make(chan struct{})
	close(done)
	e.containers["c1"] = &container{id: "c1", init: &process{done: done}}
	return e
}

func fuzzCreate(t *testing.T, req *agentapi.CreateContainerRequest) {
	var spec specs.Spec
	jsonErr := json.Unmarshal(req.GetOciSpec(), &spec)
	badID := req.GetContainerId() == "" || slices.ContainsFunc([]byte(req.GetContainerId()), func(b byte) bool { return b == '/' || b == 0 })
	if badID || jsonErr != nil || spec.Process == nil || spec.Root == nil {
		// The handler refuses these before it reserves the id.
		wantRefusal(t, "create", newEngine().create(req), codes.InvalidArgument)
		return
	}
	// Beyond here create calls libcontainer.Create: convert as it does.
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: req.GetContainerId(), NoPivotRoot: true, Spec: &spec})
	if err == nil {
		// libcontainer.Create's first step; its verdict is either way fine.
		_ = validate.Validate(cfg)
		if !cfg.NoPivotRoot || cfg.Cgroups == nil {
			t.Fatalf("config lost NoPivotRoot or cgroups: %+v", cfg)
		}
	}
	checkProcess(t, spec.Process, true)
}

func fuzzExec(t *testing.T, req *agentapi.ExecProcessRequest) {
	var sp specs.Process
	jsonErr := json.Unmarshal(req.GetProcess(), &sp)
	if req.GetGuestRoot() {
		// execGuest starts the process once decoded; run it only when it refuses first.
		if req.GetContainerId() != "" || req.GetExecId() == "" || jsonErr != nil || len(sp.Args) == 0 {
			wantRefusal(t, "guest exec", newEngine().execGuest(req), codes.InvalidArgument)
			return
		}
		cmd, err := guestCommandFor(&sp)
		if err != nil {
			wantRefusal(t, "guest command", err, codes.FailedPrecondition)
			return
		}
		if !slices.Equal(cmd.Args, sp.Args) || !slices.Equal(cmd.Env, sp.Env) || cmd.Dir == "" ||
			cmd.SysProcAttr.Credential.Uid != sp.User.UID || len(cmd.SysProcAttr.Credential.Groups) != len(sp.User.AdditionalGids) {
			t.Fatalf("guest command %+v does not carry process %+v", cmd, sp)
		}
		return
	}
	// The real handler: decodes, then refuses because c1 is not running.
	wantRefusal(t, "exec", exitedEngine().exec(req), codes.NotFound, codes.InvalidArgument, codes.FailedPrecondition)
	if jsonErr == nil {
		checkProcess(t, &sp, false)
	}
}

func fuzzUpdate(t *testing.T, req *agentapi.UpdateContainerRequest) {
	var res specs.LinuxResources
	if err := json.Unmarshal(req.GetResources(), &res); err != nil || req.GetContainerId() != "c1" {
		// The handler refuses these before it touches the container's cgroup.
		wantRefusal(t, "update", exitedEngine().update(req), codes.NotFound, codes.InvalidArgument)
		return
	}
	// Beyond here update writes the cgroup: convert as it does.
	spec := specs.Spec{Linux: &specs.Linux{Resources: &res}}
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: "c1", Spec: &spec}, nil)
	if err != nil {
		return
	}
	if cg.Resources == nil {
		t.Fatal("cgroup config without resources")
	}
	if res.Memory != nil && res.Memory.Limit != nil && cg.Resources.Memory != *res.Memory.Limit {
		t.Fatalf("memory limit %d, want %d", cg.Resources.Memory, *res.Memory.Limit)
	}
	if res.CPU != nil && res.CPU.Cpus != cg.Resources.CpusetCpus {
		t.Fatalf("cpuset %q, want %q", cg.Resources.CpusetCpus, res.CPU.Cpus)
	}
}

// checkProcess asserts libcontainerProcess carries the OCI process over.
func checkProcess(t *testing.T, sp *specs.Process, init bool) {
	t.Helper()
	lp := libcontainerProcess(sp, init)
	if !slices.Equal(lp.Args, sp.Args) || !slices.Equal(lp.Env, sp.Env) || lp.Cwd != sp.Cwd || lp.Init != init {
		t.Fatalf("process %+v lost args, env, cwd or init from %+v", lp, sp)
	}
	if lp.UID != int(sp.User.UID) || lp.GID != int(sp.User.GID) || lp.UID < 0 || lp.GID < 0 || len(lp.AdditionalGroups) != len(sp.User.AdditionalGids) {
		t.Fatalf("process ids %d:%d %v, want %d:%d %v", lp.UID, lp.GID, lp.AdditionalGroups, sp.User.UID, sp.User.GID, sp.User.AdditionalGids)
	}
	if lp.NoNewPrivileges == nil || *lp.NoNewPrivileges != sp.NoNewPrivileges {
		t.Fatal("no_new_privileges lost")
	}
	if !init && sp.Capabilities != nil && (lp.Capabilities == nil || !slices.Equal(lp.Capabilities.Bounding, sp.Capabilities.Bounding)) {
		t.Fatal("exec capabilities lost")
	}
}
