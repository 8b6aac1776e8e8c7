package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/vm"
)

// qmpHandler answers one command of a scripted QMP server: it writes to w
// whatever lines it likes (events, then usually the reply).
type qmpHandler func(w *qmpConn, execute, id string, args json.RawMessage)

// qmpConn is the server's side of the connection; a handler sets hangUp to
// close it once its lines are sent.
type qmpConn struct {
	*bufio.Writer
	hangUp bool
}

// serveQMP is a hand-written QMP server on a unix socket: it greets, accepts
// qmp_capabilities, and hands every other command to h, one at a time (as
// QEMU's monitor does). It returns the socket's path.
func serveQMP(t *testing.T, h qmpHandler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		c, err := l.Accept()
		l.Close()
		if err != nil {
			return
		}
		defer c.Close()
		w := &qmpConn{Writer: bufio.NewWriterSize(c, 64<<10)}
		_, _ = w.WriteString(`{"QMP": {"version": {}, "capabilities": ["oob"]}}` + "\n")
		if w.Flush() != nil {
			return
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req struct {
				Execute   string          `json:"execute"`
				ID        string          `json:"id"`
				Arguments json.RawMessage `json:"arguments"`
			}
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				continue
			}
			if req.Execute == "qmp_capabilities" {
				qmpReturn(w, req.ID, `{}`)
			} else {
				h(w, req.Execute, req.ID, req.Arguments)
			}
			if w.Flush() != nil || w.hangUp {
				return
			}
		}
	}()
	return sock
}

func qmpReturn(w io.Writer, id, ret string) {
	fmt.Fprintf(w, `{"return": %s, "id": %q}`+"\n", ret, id)
}

// qmpFlood writes n events nobody in the test waits for: the kinds a guest
// can cause at will (RTC_CHANGE, NIC_RX_FILTER_CHANGED) and the deletion of
// other devices, which the waiter must not take for its own.
func qmpFlood(w io.Writer, n int) {
	for i := range n {
		switch i % 3 {
		case 0:
			fmt.Fprintf(w, `{"event": "RTC_CHANGE", "data": {"offset": %d}, "timestamp": {"seconds": 1, "microseconds": 2}}`+"\n", i)
		case 1:
			fmt.Fprintf(w, `{"event": "NIC_RX_FILTER_CHANGED", "data": {"name": "nic%d", "path": "/machine/peripheral/nic%d/virtio-backend"}}`+"\n", i, i)
		default:
			fmt.Fprintf(w, `{"event": "DEVICE_DELETED", "data": {"device": "other%d", "path": "/machine/peripheral/other%d"}}`+"\n", i, i)
		}
	}
}

// matchDevice matches a DEVICE_DELETED event of the device with this id.
func matchDevice(id string) func(json.RawMessage) bool {
	return func(data json.RawMessage) bool {
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(data, &d) == nil && d.Device == id
	}
}

// unplug is what a hot-unplug does over QMP: subscribe to the device's
// DEVICE_DELETED before device_del (QEMU may send the event before the
// reply: a slot the guest never powered is emptied at once), then wait.
func unplug(ctx context.Context, q *qmpClient, dev string) error {
	deleted := q.Subscribe("DEVICE_DELETED", matchDevice(dev))
	defer deleted.Cancel()
	if err := q.Execute(ctx, "device_del", map[string]any{"id": dev}, nil); err != nil {
		return err
	}
	_, err := deleted.Wait(ctx)
	return err
}

// TestUnplugSeesItsEventThroughAFlood unplugs a disk while the monitor sends
// thousands of events around its DEVICE_DELETED, and while other commands run
// on the same connection. The event can precede the end of the command that
// causes it.
func TestUnplugSeesItsEventThroughAFlood(t *testing.T) {
	const flood = 5000
	for _, tc := range []struct {
		name          string
		before, after int // flood events before and after DEVICE_DELETED
		eventFirst    bool
	}{
		{name: "event before the reply", before: flood, after: flood, eventFirst: true},
		{name: "event after the reply", before: flood, after: flood},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
				switch execute {
				case "device_del":
					if !tc.eventFirst {
						qmpReturn(w, id, `{}`)
					}
					qmpFlood(w, tc.before)
					_, _ = w.WriteString(`{"event": "DEVICE_DELETED", "data": {"device": "disk1", "path": "/machine/peripheral/disk1"}}` + "\n")
					qmpFlood(w, tc.after)
					if tc.eventFirst {
						qmpReturn(w, id, `{}`)
					}
				case "echo":
					qmpReturn(w, id, string(args))
				default:
					fmt.Fprintf(w, `{"error": {"class": "CommandNotFound", "desc": "no %s"}, "id": %q}`+"\n", execute, id)
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			q, err := dialQMP(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()

			// Commands keep running while the events pour in; each must get
			// its own answer.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var answered atomic.Int64
			cmdErr := make(chan error, 4)
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						n := g*1_000_000 + i
						var got struct{ N int }
						if err := q.Execute(ctx, "echo", map[string]int{"n": n}, &got); err != nil || got.N != n {
							cmdErr <- fmt.Errorf("echo %d: got %d, %v", n, got.N, err)
							return
						}
						answered.Add(1)
					}
				}()
			}

			start := time.Now()
			err = unplug(ctx, q, "disk1")
			close(stop)
			wg.Wait()
			if err != nil {
				t.Fatalf("the unplug lost its DEVICE_DELETED among %d events: %v", tc.before+tc.after, err)
			}
			select {
			case err := <-cmdErr:
				t.Fatalf("a command during the flood: %v", err)
			default:
			}
			if answered.Load() == 0 {
				t.Error("no command was answered during the unplug")
			}
			t.Logf("unplug took %v through %d events, %d commands answered meanwhile", time.Since(start), tc.before+tc.after, answered.Load())
		})
	}
}

// TestUnplugIgnoresOtherDevicesDeletion: a DEVICE_DELETED for another device
// (or for the virtio backend below ours, which has a path but no id) does not
// end the wait; the unplug times out.
func TestUnplugIgnoresOtherDevicesDeletion(t *testing.T) {
	sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
		if execute == "device_del" {
			_, _ = w.WriteString(`{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/nic1-dev/virtio-backend"}}` + "\n")
			_, _ = w.WriteString(`{"event": "DEVICE_DELETED", "data": {"device": "nic2-dev", "path": "/machine/peripheral/nic2-dev"}}` + "\n")
		}
		qmpReturn(w, id, `{}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer wcancel()
	if err := unplug(wctx, q, "nic1-dev"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the unplug took another device's deletion for its own: %v", err)
	}
}

// TestQMPEchoUnderConcurrency: many goroutines share one connection and each
// gets the reply to its own command (replies are matched by id).
func TestQMPEchoUnderConcurrency(t *testing.T) {
	sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
		qmpFlood(w, 10)
		qmpReturn(w, id, string(args))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				s := strconv.Itoa(g) + "-" + strconv.Itoa(i)
				var got struct{ S string }
				if err := q.Execute(ctx, "echo", map[string]string{"s": s}, &got); err != nil || got.S != s {
					errs <- fmt.Errorf("echo %s: got %q, %v", s, got.S, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestResizeAfterAdoptPicksAFreeDIMM grows a VM that already has a DIMM, as
// one re-adopted after a cocoond restart does: the new DIMM must not reuse a
// name QEMU already has.
func TestResizeAfterAdoptPicksAFreeDIMM(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing string
		want     string
	}{
		{"no DIMM yet", `[]`, "dimm0"},
		{"dimm0 plugged before the restart", `[{"type":"dimm","data":{"id":"dimm0"}}]`, "dimm1"},
		{"a gap is reused", `[{"type":"dimm","data":{"id":"dimm1"}}]`, "dimm0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var added []string
			sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
				switch execute {
				case "query-memory-devices":
					qmpReturn(w, id, tc.existing)
				case "query-memdev":
					qmpReturn(w, id, `[]`)
				case "device_add":
					var a struct {
						ID string `json:"id"`
					}
					_ = json.Unmarshal(args, &a)
					mu.Lock()
					added = append(added, a.ID)
					mu.Unlock()
					qmpReturn(w, id, `{}`)
				default:
					qmpReturn(w, id, `{}`)
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			q, err := dialQMP(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			v := &qemuVM{qmp: q, Supervisor: vm.NewSupervisor(vm.State{ID: "t", VCPUs: 1, MemoryMiB: 256}, processName, nil, logrus.NewEntry(logrus.New()))}
			if err := v.addMemory(ctx, 128); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(added) != 1 || added[0] != tc.want {
				t.Fatalf("plugged %v, want [%s]", added, tc.want)
			}
			if got := v.State().MemoryMiB; got != 384 {
				t.Fatalf("state says %d MiB, want 384", got)
			}
		})
	}
}

// TestResizeAfterACrashMidDIMMSkipsTheOrphanBackend: a cocoond killed
// between object-add hpmemN and device_add dimmN leaves QEMU with the memory
// backend and no DIMM. After the restart the next resize must not pick N
// again: QEMU refuses a duplicate object id, and every later resize of the
// pod would fail the same way.
func TestResizeAfterACrashMidDIMMSkipsTheOrphanBackend(t *testing.T) {
	var mu sync.Mutex
	objects := map[string]bool{"hpmem0": true} // left by the crash
	devices := map[string]string{}             // dimm id → memdev
	sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
		mu.Lock()
		defer mu.Unlock()
		var a struct {
			ID     string `json:"id"`
			Memdev string `json:"memdev"`
		}
		_ = json.Unmarshal(args, &a)
		switch execute {
		case "query-memory-devices":
			var out []string
			for d := range devices {
				out = append(out, fmt.Sprintf(`{"type":"dimm","data":{"id":%q}}`, d))
			}
			qmpReturn(w, id, "["+strings.Join(out, ",")+"]")
		case "query-memdev":
			var out []string
			for o := range objects {
				out = append(out, fmt.Sprintf(`{"id":%q,"size":1,"merge":false,"dump":false,"prealloc":false,"share":true,"host-nodes":[],"policy":"default"}`, o))
			}
			qmpReturn(w, id, "["+strings.Join(out, ",")+"]")
		case "object-add":
			if objects[a.ID] {
				fmt.Fprintf(w, `{"error": {"class": "GenericError", "desc": "attempt to add duplicate property '%s' to object (type 'container')"}, "id": %q}`+"\n", a.ID, id)
				return
			}
			objects[a.ID] = true
			qmpReturn(w, id, `{}`)
		case "device_add":
			if _, dup := devices[a.ID]; dup || !objects[a.Memdev] {
				fmt.Fprintf(w, `{"error": {"class": "GenericError", "desc": "bad device"}, "id": %q}`+"\n", id)
				return
			}
			devices[a.ID] = a.Memdev
			qmpReturn(w, id, `{}`)
		case "object-del":
			delete(objects, a.ID)
			qmpReturn(w, id, `{}`)
		default:
			qmpReturn(w, id, `{}`)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	v := &qemuVM{qmp: q, Supervisor: vm.NewSupervisor(vm.State{ID: "t", VCPUs: 1, MemoryMiB: 256}, processName, nil, logrus.NewEntry(logrus.New()))}
	if err := v.addMemory(ctx, 128); err != nil {
		t.Fatalf("resize after a crash between object-add and device_add: %v", err)
	}
	if got := v.State().MemoryMiB; got != 384 {
		t.Fatalf("state says %d MiB, want 384", got)
	}
}

// TestResizeAfterAStaleRecordPicksAFreeCPUName: the pod record's vCPU count
// lags QEMU when cocoond died (or the resize failed on memory, or the agent's
// OnlineCPUMem failed) after a vCPU was plugged and before the record was
// rewritten. The next vCPU must not be named after the stale count: QEMU
// refuses a duplicate device id, and the pod could never grow again.
func TestResizeAfterAStaleRecordPicksAFreeCPUName(t *testing.T) {
	var mu sync.Mutex
	devices := map[string]bool{"cpu1": true} // plugged before the crash
	sock := serveQMP(t, func(w *qmpConn, execute, id string, args json.RawMessage) {
		mu.Lock()
		defer mu.Unlock()
		switch execute {
		case "query-hotpluggable-cpus":
			var out []string
			for i := 3; i >= 0; i-- {
				path := ""
				switch {
				case i == 0:
					path = "/machine/unattached/device[0]"
				case devices[fmt.Sprintf("cpu%d", i)]:
					path = "/machine/peripheral/cpu" + strconv.Itoa(i)
				}
				if path == "" {
					out = append(out, fmt.Sprintf(`{"type":"qemu64-x86_64-cpu","vcpus-count":1,"props":{"socket-id":%d,"core-id":0,"thread-id":0}}`, i))
				} else {
					out = append(out, fmt.Sprintf(`{"type":"qemu64-x86_64-cpu","vcpus-count":1,"props":{"socket-id":%d,"core-id":0,"thread-id":0},"qom-path":%q}`, i, path))
				}
			}
			qmpReturn(w, id, "["+strings.Join(out, ",")+"]")
		case "device_add":
			var a struct {
				ID       string `json:"id"`
				SocketID int    `json:"socket-id"`
			}
			_ = json.Unmarshal(args, &a)
			if devices[a.ID] {
				fmt.Fprintf(w, `{"error": {"class": "GenericError", "desc": "Duplicate device ID '%s'"}, "id": %q}`+"\n", a.ID, id)
				return
			}
			devices[a.ID] = true
			qmpReturn(w, id, `{}`)
		default:
			qmpReturn(w, id, `{}`)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	// The record says 1 vCPU; QEMU has 2 (cpu1 plugged, unrecorded).
	v := &qemuVM{qmp: q, Supervisor: vm.NewSupervisor(vm.State{ID: "t", VCPUs: 1, MemoryMiB: 256}, processName, nil, logrus.NewEntry(logrus.New()))}
	if err := v.addCPUs(ctx, 1, 2); err != nil {
		t.Fatalf("grow after a stale record: %v", err)
	}
}
