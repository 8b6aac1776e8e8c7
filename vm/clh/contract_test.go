package clh

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
	"github.com/cocoon-runtime/cocoon/vm"
)

func create(t *testing.T, h *harness, spec *vm.Spec) *VMM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := h.drv.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	v := m.(*VMM)
	t.Cleanup(func() { _ = v.Stop(context.Background()) })
	return v
}

func boot(t *testing.T, h *harness, spec *vm.Spec) *VMM {
	t.Helper()
	v := create(t, h, spec)
	if err := v.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return v
}

func TestCreateStartStop(t *testing.T) {
	h := newHarness(t, "")
	spec := h.spec("vm1", 2, true)
	v := create(t, h, spec)

	st := v.State()
	want := &vm.State{
		Driver: "clh", ID: "vm1", RunDir: spec.RunDir, Pid: st.Pid, StartTime: st.StartTime,
		Helpers: st.Helpers, ControlSocket: spec.RunDir + "/api.sock", AgentSocket: spec.RunDir + "/vsock.sock",
		VCPUs: 1, MemoryMiB: 256,
	}
	if !reflect.DeepEqual(st, want) || len(st.Helpers) != 1 || st.Helpers[0].Name != "virtiofsd-rootfs" {
		t.Errorf("State() = %+v", st)
	}
	if err := v.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}

	// The agent channel: hybrid vsock through CH's socket.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := v.DialAgent(ctx)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	r := bufio.NewReader(conn)
	if line, _ := r.ReadString('\n'); line != "fake-agent\n" {
		t.Errorf("agent greeting %q", line)
	}
	conn.Close()

	if err := v.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := v.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	select {
	case <-v.Done():
	default:
		t.Error("Done not closed after Stop")
	}

	wantSeq := []string{
		"GET vmm.ping", "PUT vm.create", "GET vm.info", "PUT vm.add-net", "PUT vm.add-net",
		"PUT vm.boot", "GET vm.info", "PUT vm.shutdown", "PUT vmm.shutdown",
	}
	if got := h.requests(st.Pid); !reflect.DeepEqual(got, wantSeq) {
		t.Errorf("requests\n got %q\nwant %q", got, wantSeq)
	}
	for i, e := range h.find("vm.add-net") {
		var nc clhapi.NetConfig
		_ = json.Unmarshal(e.Body, &nc)
		if e.Status != http.StatusNoContent || !slices.Equal(e.FDKinds, []string{"fifo"}) ||
			*nc.Id != spec.NICs[i].ID || *nc.NumQueues != 2 || *nc.Mac != spec.NICs[i].MAC.String() || *nc.Mtu != 1500 {
			t.Errorf("add-net %d: status %d, fds %v, body %s", i, e.Status, e.FDKinds, e.Body)
		}
	}
	var cfg clhapi.VmConfig
	_ = json.Unmarshal(h.find("vm.create")[0].Body, &cfg)
	if cfg.Memory.Shared == nil || !*cfg.Memory.Shared || cfg.Fs == nil || (*cfg.Fs)[0].Socket != spec.RunDir+"/virtiofs-rootfs.sock" {
		t.Errorf("vm.create body lacks shared memory or the fs: %s", h.find("vm.create")[0].Body)
	}
	h.assertNothingLeft()
}

func TestAPIAnswersAndErrors(t *testing.T) {
	for _, tt := range []struct {
		name       string
		fail       string
		op         func(ctx context.Context, h *harness, v *VMM) error
		wantStatus int // 0: success
		wantMsg    string
		endpoint   string
		wantAnswer int // what the fake answered to endpoint
	}{
		{
			name: "500 with a message array surfaces as a Go error",
			fail: "vm.counters=500",
			op: func(ctx context.Context, h *harness, v *VMM) error {
				_, err := v.Counters(ctx)
				return err
			},
			wantStatus: http.StatusInternalServerError,
			wantMsg:    "cloud-hypervisor vm.counters: HTTP 500: fake: injected Internal Server Error: cause of the injected error",
			endpoint:   "vm.counters", wantAnswer: http.StatusInternalServerError,
		},
		{
			name: "counters",
			op: func(ctx context.Context, h *harness, v *VMM) error {
				c, err := v.Counters(ctx)
				if err == nil && c["_net0"] == nil {
					err = errors.New("no counters for _net0")
				}
				return err
			},
			endpoint: "vm.counters", wantAnswer: http.StatusOK,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.fail)
			v := boot(t, h, h.spec("vm", 1, false))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := tt.op(ctx, h, v)
			var ae *APIError
			switch {
			case tt.wantStatus == 0 && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantStatus != 0 && (!errors.As(err, &ae) || ae.Status != tt.wantStatus || err.Error() != tt.wantMsg):
				t.Fatalf("error %v, want HTTP %d %q", err, tt.wantStatus, tt.wantMsg)
			}
			got := h.find(tt.endpoint)
			if len(got) == 0 || got[len(got)-1].Status != tt.wantAnswer {
				t.Errorf("fake saw %+v, want a %s answered %d", got, tt.endpoint, tt.wantAnswer)
			}
			if err := v.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			h.assertNothingLeft()
		})
	}
}

func TestResize(t *testing.T) {
	for _, tt := range []struct {
		name      string
		fail      string
		timeout   time.Duration
		vcpus     uint32
		memMiB    uint64
		wantErr   string
		wantCalls int
		wantState [2]uint64 // vcpus, MiB after
	}{
		{name: "grow", vcpus: 2, memMiB: 512, wantCalls: 1, wantState: [2]uint64{2, 512}},
		{name: "cpus only", vcpus: 3, wantCalls: 1, wantState: [2]uint64{3, 256}},
		{name: "429 while a CPU removal is pending, then ok", fail: "vm.resize=429x2", vcpus: 1, memMiB: 256, wantCalls: 3, wantState: [2]uint64{1, 256}},
		{name: "429 until the deadline", fail: "vm.resize=429", timeout: 300 * time.Millisecond, vcpus: 1,
			wantErr: "HTTP 429", wantState: [2]uint64{1, 256}},
		{name: "above the vCPU limit", vcpus: 5, wantErr: "above the limit of 4", wantState: [2]uint64{1, 256}},
		{name: "above the memory limit", memMiB: 2048, wantErr: "above the limit of 1024 MiB", wantState: [2]uint64{1, 256}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.fail)
			v := boot(t, h, h.spec("vm", 0, false))
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			err := v.Resize(ctx, tt.vcpus, tt.memMiB)
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Resize: %v, want error %q", err, tt.wantErr)
			}
			if tt.timeout != 0 && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v does not wrap the deadline", err)
			}
			calls := h.find("vm.resize")
			if tt.wantCalls != 0 && len(calls) != tt.wantCalls {
				t.Errorf("%d vm.resize requests, want %d", len(calls), tt.wantCalls)
			}
			if tt.wantCalls != 0 {
				var body clhapi.VmResize
				_ = json.Unmarshal(calls[0].Body, &body)
				if (body.DesiredVcpus != nil) != (tt.vcpus != 0) || (body.DesiredRam != nil) != (tt.memMiB != 0) ||
					(body.DesiredRam != nil && *body.DesiredRam != int64(tt.memMiB)<<20) {
					t.Errorf("vm.resize body %s", calls[0].Body)
				}
			}
			if st := v.State(); uint64(st.VCPUs) != tt.wantState[0] || st.MemoryMiB != tt.wantState[1] {
				t.Errorf("state after resize: %d vCPUs %d MiB, want %v", st.VCPUs, st.MemoryMiB, tt.wantState)
			}
		})
	}
}

// A Create that fails part-way leaves no process, socket, file or dir.
func TestCreateFailureLeavesNothing(t *testing.T) {
	for _, tt := range []struct {
		name    string
		fail    string
		binary  string // script body replacing the fake CH
		noShare bool
		badSrc  bool
		wantErr []string
	}{
		{name: "vm.create answers 400", fail: "vm.create=400", wantErr: []string{"vm.create", "HTTP 400", "fake: injected Bad Request"}},
		{name: "add-net fails", fail: "vm.add-net=500", wantErr: []string{"vm.add-net net0", "HTTP 500"}},
		{name: "VM not created after all", fail: "vm.info=500", wantErr: []string{"check created", "vm.info: HTTP 500"}},
		{name: "cloud-hypervisor exits at once", binary: "#!/bin/sh\necho boom >&2\nexit 3\n", wantErr: []string{"exited before its API answered", "cloud-hypervisor.log"}},
		{name: "virtiofsd fails", badSrc: true, wantErr: []string{"virtiofsd: virtiofsd for rootfs exited"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.fail)
			if tt.binary != "" {
				h.drv.binary = h.writeScript("broken-ch", tt.binary)
			}
			spec := h.spec("vm", 1, true)
			if tt.badSrc {
				spec.Shares[0].Source = "/nonexistent"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			m, err := h.drv.Create(ctx, spec)
			if err == nil {
				_ = m.Stop(ctx)
				t.Fatal("Create succeeded")
			}
			if m != nil {
				t.Errorf("Create returned a VMM with its error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			h.assertNothingLeft()
		})
	}
}

func TestAdopt(t *testing.T) {
	for _, tt := range []struct {
		name string
		// kill makes the VM unadoptable before Adopt.
		kill    func(t *testing.T, v *VMM)
		wantErr bool
	}{
		{name: "live VM"},
		{name: "dead cloud-hypervisor", wantErr: true, kill: func(t *testing.T, v *VMM) {
			_ = unix.Kill(v.State().Pid, unix.SIGKILL)
			<-v.Done()
		}},
		{name: "dead virtiofsd", wantErr: true, kill: func(t *testing.T, v *VMM) {
			v.Detach() // the old cocoond is gone: nobody supervises
			h := v.State().Helpers[0]
			_ = unix.Kill(h.Pid, unix.SIGKILL)
			for h.Alive() {
				time.Sleep(10 * time.Millisecond)
			}
		}},
		{name: "guest shut down", wantErr: true, kill: func(t *testing.T, v *VMM) {
			resp, err := v.api.c.ShutdownVM(context.Background())
			if err := check("vm.shutdown", resp, err, nil); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "")
			old := boot(t, h, h.spec("vm", 1, true))
			if tt.kill != nil {
				tt.kill(t, old)
			}
			// What cocoond persisted, read back by a new cocoond.
			b, _ := json.Marshal(old.State())
			var st vm.State
			_ = json.Unmarshal(b, &st)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			m, err := New(Options{Log: testLog(t)}).Adopt(ctx, &st)
			if tt.wantErr {
				if !errors.Is(err, vm.ErrNotRunning) || m != nil {
					t.Fatalf("Adopt = %v, %v; want an error wrapping ErrNotRunning", m, err)
				}
				h.assertNothingLeft()
				return
			}
			if err != nil {
				t.Fatalf("Adopt: %v", err)
			}
			v := m.(*VMM)
			if !reflect.DeepEqual(v.State(), old.State()) {
				t.Errorf("adopted state %+v, was %+v", v.State(), old.State())
			}
			if err := v.Resize(ctx, 5, 0); err == nil {
				t.Error("the limits from vm.info were not applied")
			}
			if _, err := v.Counters(ctx); err != nil {
				t.Errorf("the adopted VMM's API: %v", err)
			}
			if err := v.Stop(ctx); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			<-old.Done()
			if err := v.Err(); err == nil || !strings.Contains(err.Error(), "exited") {
				t.Errorf("Err() after Stop = %v", err)
			}
			h.assertNothingLeft()
		})
	}
}

func TestHelperDeathStopsVM(t *testing.T) {
	h := newHarness(t, "")
	v := boot(t, h, h.spec("vm", 0, true))
	_ = unix.Kill(v.State().Helpers[0].Pid, unix.SIGKILL)
	// A guest powering off ends virtiofsd a moment before its VMM: the VM
	// gets vm.HelperGrace to show that this is a shutdown.
	select {
	case <-v.Done():
		t.Fatalf("cloud-hypervisor killed at once: %v", v.Err())
	case <-time.After(vm.HelperGrace / 4):
	}
	select {
	case <-v.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("cloud-hypervisor still running after virtiofsd died")
	}
	if err := v.Err(); !errors.Is(err, vm.ErrNotRunning) || !strings.Contains(err.Error(), "virtiofsd-rootfs") {
		t.Errorf("Err() = %v, want ErrNotRunning naming virtiofsd", err)
	}
	if err := v.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.assertNothingLeft()
}
