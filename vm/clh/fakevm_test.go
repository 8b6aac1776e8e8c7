package clh

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
)

// fakeVM is the fake CH's VM: the state machine of the spec (Created →
// Running ⇄ Paused → Shutdown) and its devices.
type fakeVM struct {
	rec      *recorder
	contract *contract
	fails    map[string]*failRule
	exit     chan struct{}

	mu    sync.Mutex
	state clhapi.VmState // "" until created
	// config is the VM's VmConfig, hot-plugged devices included, as in
	// vm.info and a snapshot's config.json.
	config  map[string]any
	devices map[string]string // id -> config list ("disks", "net", ...)
	nextBDF int
	vsock   net.Listener
}

func (f *fakeVM) answer(endpoint string, body []byte, nfds int, e *entry) (int, []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.fails[endpoint]; r != nil && r.left != 0 {
		r.left--
		return fail(r.status, "fake: injected "+http.StatusText(r.status), "cause of the injected error")
	}
	created := f.state != ""
	switch endpoint {
	case "vmm.ping":
		return ok(clhapi.VmmPingResponse{Version: "v51.0-fake", Pid: ptr(int64(os.Getpid()))})
	case "vmm.shutdown":
		return http.StatusOK, nil
	case "vm.counters":
		return ok(clhapi.VmCounters{"_net0": {"rx_bytes": 0}})
	case "vm.create", "vm.restore":
		if created {
			return fail(http.StatusInternalServerError, "VM is already created")
		}
		return f.create(endpoint, body, nfds, e)
	}
	if !created {
		return fail(http.StatusNotFound, "VM is not created")
	}
	switch endpoint {
	case "vm.info":
		return ok(map[string]any{"config": f.config, "state": f.state})
	case "vm.boot":
		return f.move(clhapi.Created, clhapi.Running)
	case "vm.pause":
		return f.move(clhapi.Running, clhapi.Paused)
	case "vm.resume":
		return f.move(clhapi.Paused, clhapi.Running)
	case "vm.shutdown":
		if f.state != clhapi.Running && f.state != clhapi.Paused {
			return fail(http.StatusMethodNotAllowed, "VM is not booted")
		}
		f.state = clhapi.Shutdown
		return http.StatusNoContent, nil
	case "vm.delete":
		f.state = ""
		return http.StatusNoContent, nil
	case "vm.resize":
		return http.StatusNoContent, nil
	case "vm.snapshot":
		return f.snapshot(body)
	case "vm.remove-device":
		var r clhapi.VmRemoveDevice
		_ = json.Unmarshal(body, &r)
		if r.Id == nil || f.devices[*r.Id] == "" {
			return fail(http.StatusNotFound, "no such device")
		}
		key := f.devices[*r.Id]
		list, _ := f.config[key].([]any)
		f.config[key] = slices.DeleteFunc(list, func(d any) bool { return d.(map[string]any)["id"] == *r.Id })
		delete(f.devices, *r.Id)
		return http.StatusNoContent, nil
	case "vm.add-net", "vm.add-disk", "vm.add-fs", "vm.add-vsock":
		if endpoint == "vm.add-net" && nfds != 1 {
			return fail(http.StatusBadRequest, fmt.Sprintf("expected 1 tap fd for 2 queues, got %d", nfds))
		}
		var d map[string]any
		_ = json.Unmarshal(body, &d)
		id, _ := d["id"].(string)
		if f.devices[id] != "" {
			return fail(http.StatusInternalServerError, "identifier "+id+" is not unique")
		}
		key := map[string]string{"vm.add-net": "net", "vm.add-disk": "disks", "vm.add-fs": "fs", "vm.add-vsock": "vsock"}[endpoint]
		f.devices[id] = key
		if key == "vsock" {
			f.config[key] = d
		} else {
			list, _ := f.config[key].([]any)
			f.config[key] = append(list, d)
		}
		if f.state == clhapi.Created {
			return http.StatusNoContent, nil // cold-plugged
		}
		f.nextBDF++
		return ok(clhapi.PciDeviceInfo{Id: id, Bdf: fmt.Sprintf("0000:00:%02x.0", 4+f.nextBDF)})
	}
	return fail(http.StatusNotFound, "Not Found")
}

func ok(v any) (int, []byte) {
	b, _ := json.Marshal(v)
	return http.StatusOK, b
}

func (f *fakeVM) move(from, to clhapi.VmState) (int, []byte) {
	if f.state != from {
		return fail(http.StatusMethodNotAllowed, fmt.Sprintf("VM is %s, not %s", f.state, from))
	}
	f.state = to
	return http.StatusNoContent, nil
}

// create handles vm.create and vm.restore (which reads config.json from the
// snapshot): CH binds the vsock socket when it creates the device.
func (f *fakeVM) create(endpoint string, body []byte, nfds int, e *entry) (int, []byte) {
	cfg := body
	f.state = clhapi.Created
	if endpoint == "vm.restore" {
		var rc clhapi.RestoreConfig
		_ = json.Unmarshal(body, &rc)
		want := 0
		if rc.NetFds != nil {
			for _, n := range *rc.NetFds {
				want += n.NumFds
			}
		}
		if want != nfds {
			f.state = ""
			return fail(http.StatusBadRequest, fmt.Sprintf("net_fds want %d fds, got %d", want, nfds))
		}
		var err error
		if cfg, err = os.ReadFile(filepath.Join(strings.TrimPrefix(rc.SourceUrl, "file://"), snapshotConfig)); err != nil {
			f.state = ""
			return fail(http.StatusInternalServerError, err.Error())
		}
		f.state = clhapi.Paused
	}
	var vc clhapi.VmConfig
	if err := errors.Join(json.Unmarshal(cfg, &vc), json.Unmarshal(cfg, &f.config)); err != nil {
		f.state = ""
		return fail(http.StatusBadRequest, err.Error())
	}
	f.devices = map[string]string{}
	for _, d := range deref(vc.Disks) {
		f.devices[*d.Id] = "disks"
	}
	for _, n := range deref(vc.Net) {
		f.devices[*n.Id] = "net"
	}
	if vc.Vsock != nil {
		e.VsockSocket = vc.Vsock.Socket
		l, err := net.Listen("unix", vc.Vsock.Socket)
		if err != nil {
			f.state = ""
			return fail(http.StatusInternalServerError, "vsock: "+err.Error())
		}
		f.vsock = l
		go f.serveVsock(l)
	}
	return http.StatusNoContent, nil
}

func deref[T any](p *[]T) []T {
	if p == nil {
		return nil
	}
	return *p
}

func (f *fakeVM) snapshot(body []byte) (int, []byte) {
	if f.state != clhapi.Paused {
		return fail(http.StatusMethodNotAllowed, "VM is not paused")
	}
	var sc clhapi.VmSnapshotConfig
	_ = json.Unmarshal(body, &sc)
	dir, found := strings.CutPrefix(*sc.DestinationUrl, "file://")
	if !found {
		return fail(http.StatusInternalServerError, "bad URL")
	}
	cfg, _ := json.Marshal(f.config)
	for name, data := range map[string][]byte{snapshotConfig: cfg, "state.json": []byte("{}"), "memory-ranges": make([]byte, 4096)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fail(http.StatusInternalServerError, err.Error())
		}
	}
	return http.StatusNoContent, nil
}

// serveVsock answers hybrid vsock: CONNECT is refused (closed without OK)
// until the guest "runs", then the fake agent greets and echoes.
func (f *fakeVM) serveVsock(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			f.mu.Lock()
			running := f.state == clhapi.Running
			f.mu.Unlock()
			if err != nil || line != fmt.Sprintf("CONNECT %d\n", agentPort) || !running {
				return
			}
			fmt.Fprintf(c, "OK 1073741824\nfake-agent\n")
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				_, _ = c.Write(buf[:n])
			}
		}()
	}
}
