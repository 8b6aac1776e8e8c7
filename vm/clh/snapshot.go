package clh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	clhapi "github.com/cocoon-runtime/cocoon/api/clh"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// snapshotConfig is the file in a CH snapshot that describes the VM; the
// others (state.json, memory-ranges) are opaque to us.
const snapshotConfig = "config.json"

// Snapshot pauses the VM, writes a snapshot into dir (an existing, empty
// directory) and resumes the VM, also when the snapshot failed.
func (v *VMM) Snapshot(ctx context.Context, dir string) (err error) {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("clh: snapshot dir %q must be absolute", dir)
	}
	resp, err := v.api.c.PauseVM(ctx)
	if err := check("vm.pause", resp, err, nil); err != nil {
		return err
	}
	defer func() {
		// Resume even when ctx has ended: a VM left paused is a hung pod.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		resp, rerr := v.api.c.ResumeVM(rctx)
		err = errors.Join(err, check("vm.resume", resp, rerr, nil))
	}()
	resp, err = v.api.c.SnapshotVM(ctx, clhapi.VmSnapshotConfig{DestinationUrl: ptr("file://" + dir)})
	return check("vm.snapshot", resp, err, nil)
}

// Restore starts a new VM from a snapshot written by Snapshot and runs it.
// spec describes the clone: its own ID and RunDir, the source's share tags
// (served by new virtiofsd) and NIC IDs (on new taps). vCPUs and memory come
// from the snapshot; spec's only seed State and the resize limits.
//
// The clone restores from its own copy of config.json in which the vsock
// socket, serial file and virtio-fs sockets point into its run dir (the
// other snapshot files are symlinked). Connections over the source's vsock
// do not survive: dial the clone's agent afresh.
func (d *Driver) Restore(ctx context.Context, spec *vm.Spec, snapshotDir string) (*VMM, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	v, l, err := d.launch(spec)
	if err != nil {
		return nil, err
	}
	clone := filepath.Join(spec.RunDir, "snapshot")
	l.Pipeline = "clh-restore"
	l.Ready = append(l.Ready,
		pipeline.Step{Name: "snapshot copy", Run: func(context.Context) (func() error, error) {
			// Removed with the run dir.
			return nil, cloneSnapshot(snapshotDir, clone, spec)
		}},
		pipeline.Step{Name: "vm.restore", Run: func(ctx context.Context) (func() error, error) {
			body := clhapi.RestoreConfig{SourceUrl: "file://" + clone}
			if len(spec.NICs) == 0 {
				resp, err := v.api.c.RestoreVM(ctx, body)
				return nil, check("vm.restore", resp, err, nil)
			}
			taps := make([]*os.File, 0, len(spec.NICs))
			nets := make([]clhapi.RestoredNetConfig, 0, len(spec.NICs))
			for _, n := range spec.NICs {
				taps = append(taps, n.Tap)
				nets = append(nets, clhapi.RestoredNetConfig{Id: n.ID, NumFds: 1})
			}
			body.NetFds = &nets
			return nil, v.api.putWithFiles(ctx, "vm.restore", body, taps, nil)
		}},
		pipeline.Step{Name: "vm.resume", Run: func(ctx context.Context) (func() error, error) {
			resp, err := v.api.c.ResumeVM(ctx)
			if err := check("vm.resume", resp, err, nil); err != nil {
				return nil, err
			}
			return nil, v.api.expectState(ctx, clhapi.Running)
		}},
	)
	if err := v.Launch(ctx, spec, l); err != nil {
		return nil, err
	}
	return v, nil
}

// cloneSnapshot makes dst a restorable copy of src for spec: config.json
// rewritten to spec's run dir, everything else symlinked.
func cloneSnapshot(src, dst string, spec *vm.Spec) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == snapshotConfig {
			continue
		}
		if err := os.Symlink(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(filepath.Join(src, snapshotConfig))
	if err != nil {
		return err
	}
	data, err = rewriteConfig(data, spec)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(src, snapshotConfig), err)
	}
	return os.WriteFile(filepath.Join(dst, snapshotConfig), data, 0o600)
}

// rewriteConfig points a snapshot's per-VM paths at spec's run dir and
// checks that spec brings every share and NIC the snapshot expects. Fields
// we do not know are kept as they are.
func rewriteConfig(data []byte, spec *vm.Spec) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // keep 64-bit sizes exact
	var cfg map[string]any
	if err := dec.Decode(&cfg); err != nil {
		return nil, err
	}
	if vs, ok := cfg["vsock"].(map[string]any); ok {
		vs["socket"] = vsockSocket(spec.RunDir)
	}
	for _, key := range []string{"serial", "console"} {
		if c, ok := cfg[key].(map[string]any); ok && c["mode"] == string(clhapi.File) {
			c["file"] = vm.ConsolePipe(spec.RunDir)
		}
	}
	for _, item := range objects(cfg["fs"]) {
		tag, _ := item["tag"].(string)
		if !slices.ContainsFunc(spec.Shares, func(s vm.Share) bool { return s.Tag == tag }) {
			return nil, fmt.Errorf("snapshot has share %q the spec does not provide", tag)
		}
		item["socket"] = fsSocket(spec.RunDir, tag)
	}
	nets := objects(cfg["net"])
	for _, item := range nets {
		id, _ := item["id"].(string)
		if !slices.ContainsFunc(spec.NICs, func(n vm.NIC) bool { return n.ID == id }) {
			return nil, fmt.Errorf("snapshot has NIC %q the spec does not provide", id)
		}
	}
	if len(nets) != len(spec.NICs) {
		return nil, fmt.Errorf("snapshot has %d NICs, spec %d", len(nets), len(spec.NICs))
	}
	return json.Marshal(cfg)
}

func objects(v any) []map[string]any {
	list, _ := v.([]any)
	var out []map[string]any
	for _, item := range list {
		if m, ok := item.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}
