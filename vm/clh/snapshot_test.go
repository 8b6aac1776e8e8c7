package clh

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/vm"
)

func TestSnapshotRestore(t *testing.T) {
	h := newHarness(t, "")
	src := boot(t, h, h.spec("src", 1, true))
	snap := filepath.Join(h.dir, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := src.Snapshot(ctx, snap); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	seq := h.requests(src.State().Pid)
	if got := seq[len(seq)-3:]; !slices.Equal(got, []string{"PUT vm.pause", "PUT vm.snapshot", "PUT vm.resume"}) {
		t.Errorf("snapshot requests %q", got)
	}

	spec := h.spec("clone", 1, true)
	clone, err := h.drv.Restore(ctx, spec, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { _ = clone.Stop(context.Background()) })
	want := []string{"GET vmm.ping", "PUT vm.restore", "PUT vm.resume", "GET vm.info"}
	if got := h.requests(clone.State().Pid); !slices.Equal(got, want) {
		t.Errorf("restore requests %q, want %q", got, want)
	}
	r := h.find("vm.restore")[0]
	if !slices.Equal(r.FDKinds, []string{"fifo"}) || r.VsockSocket != filepath.Join(spec.RunDir, "vsock.sock") {
		t.Errorf("vm.restore got fds %v and vsock %s", r.FDKinds, r.VsockSocket)
	}
	// The clone's own agent channel works; the source's is untouched.
	for _, v := range []*VMM{clone, src} {
		conn, err := v.DialAgent(ctx)
		if err != nil {
			t.Fatalf("DialAgent %s: %v", v.State().ID, err)
		}
		conn.Close()
	}
	for _, v := range []*VMM{clone, src} {
		if err := v.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
	h.assertNothingLeft()
	if _, err := os.Stat(filepath.Join(snap, snapshotConfig)); err != nil {
		t.Errorf("the snapshot itself must stay: %v", err)
	}
}

func TestRestoreMismatchLeavesNothing(t *testing.T) {
	h := newHarness(t, "")
	src := boot(t, h, h.spec("src", 1, false))
	snap := filepath.Join(h.dir, "snap")
	_ = os.Mkdir(snap, 0o700)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := src.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := src.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	clone, err := h.drv.Restore(ctx, h.spec("clone", 0, false), snap)
	if err == nil {
		_ = clone.Stop(ctx)
	}
	if err == nil || !strings.Contains(err.Error(), `snapshot has NIC "net0" the spec does not provide`) {
		t.Fatalf("Restore = %v", err)
	}
	h.assertNothingLeft()
}

func TestRewriteConfig(t *testing.T) {
	spec := &vm.Spec{RunDir: "/run/new", Shares: []vm.Share{{Tag: "rootfs"}}, NICs: []vm.NIC{{ID: "net0"}}}
	in := `{"memory":{"size":9007199254740993},"vsock":{"cid":3,"socket":"/run/old/vsock.sock"},
		"serial":{"mode":"File","file":"/run/old/console.log"},"console":{"mode":"Off"},
		"fs":[{"tag":"rootfs","socket":"/run/old/virtiofs-rootfs.sock"}],"net":[{"id":"net0","fds":[-1]}],"extra":[1]}`
	out, err := rewriteConfig([]byte(in), spec)
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	_ = json.Unmarshal(out, &got)
	_ = json.Unmarshal([]byte(`{"memory":{"size":9007199254740993},"vsock":{"cid":3,"socket":"/run/new/vsock.sock"},
		"serial":{"mode":"File","file":"/run/new/console.pipe"},"console":{"mode":"Off"},
		"fs":[{"tag":"rootfs","socket":"/run/new/virtiofs-rootfs.sock"}],"net":[{"id":"net0","fds":[-1]}],"extra":[1]}`), &want)
	if !reflect.DeepEqual(got, want) || !strings.Contains(string(out), "9007199254740993") {
		t.Errorf("rewritten config %s", out)
	}
	for _, bad := range []*vm.Spec{
		{RunDir: "/run/new", NICs: spec.NICs},
		{RunDir: "/run/new", Shares: spec.Shares},
		{RunDir: "/run/new", Shares: spec.Shares, NICs: []vm.NIC{{ID: "net0"}, {ID: "net1"}}},
	} {
		if _, err := rewriteConfig([]byte(in), bad); err == nil {
			t.Errorf("spec %+v accepted", bad)
		}
	}
}
