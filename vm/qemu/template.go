package qemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/agentclient"
	"github.com/cocoon-runtime/cocoon/vm"
)

// A snapshot template is one booted guest per handler, paused and saved
// (RAM and device state, QEMU's migration stream) so that pod VMs restore
// from it instead of booting the kernel. Its directory under
// Options.TemplateDir/<name> holds:
//
//	template.json  templateMeta: the key it was built for, figures
//	state          the migration stream: device state, no RAM
//	memory         guest RAM, a sparse file
//	agent-token    the token the template's agent read at boot (clones keep it)
//
// A template is built into a dot-named temporary directory and renamed into
// place, so a crash never leaves a half-written template where clones look.
const (
	// templateFormat changes the key of every template when the way
	// templates are built or restored changes.
	templateFormat = 2

	templateMetaFile  = "template.json"
	templateStateFile = "state"
	templateMemFile   = "memory"

	// keyRunDir, keyID and keyCID stand in for what differs between the
	// template and each clone (backends: socket paths, the process name, the
	// vsock CID the guest re-reads after a transport reset), so the key
	// covers only what a restore needs to match: the front-end devices,
	// memory and CPUs, the guest's command line.
	keyRunDir = "/template"
	keyID     = "template"
	keyCID    = 3

	// templateBuildTimeout bounds one build: a boot under TCG, the agent, the
	// save.
	templateBuildTimeout = 3 * time.Minute
)

// errNoTemplate says a VM cannot be restored yet: its template is missing or
// stale (a build has been started) or is being built.
var errNoTemplate = errors.New("no current template")

// templateMeta is template.json.
type templateMeta struct {
	Key string `json:"key"`
	// Built is when the template was saved; BuildMillis how long it took
	// from starting QEMU to a saved state; StateBytes the stream's size.
	Built       time.Time `json:"built"`
	BuildMillis int64     `json:"buildMillis"`
	StateBytes  int64     `json:"stateBytes"`
	// RAMBytes is the data in the RAM file: what each clone copies.
	RAMBytes int64 `json:"ramBytes"`
}

// templates is a driver's template store.
type templates struct {
	root string

	reclaimOnce sync.Once

	mu       sync.Mutex
	building map[string]bool // template name → a build is running

	ctx    context.Context // cancelled by Driver.Close: ends builds
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newTemplates(root string) *templates {
	ctx, cancel := context.WithCancel(context.Background())
	return &templates{root: root, building: map[string]bool{}, ctx: ctx, cancel: cancel}
}

// templateSpec is the VM a template boots: the clone's spec without the
// devices a clone attaches after the restore (virtio-fs cannot be migrated
// by QEMU 7.2; the NIC carries the pod's MAC, which the agent finds the
// interface by).
func templateSpec(spec *vm.Spec, id, runDir string) vm.Spec {
	t := *spec
	t.ID, t.RunDir, t.Template = id, runDir, ""
	t.Shares, t.NICs, t.Disks = nil, nil, nil
	return t
}

// templateKey names what a template was built from: the QEMU binary, the
// guest's kernel and initramfs (path, size, mtime and inode, which a rebuilt
// or reinstalled guest changes) and the template's command line, normalised
// so that it is the same for every clone of the template.
func templateKey(qemuBin string, spec *vm.Spec, accel string, vsock, debugConsole bool) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "format %d\n", templateFormat)
	for _, p := range []string{qemuBin, spec.Kernel, spec.Initramfs} {
		id, err := fileIdentity(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintln(h, id)
	}
	t := templateSpec(spec, keyID, keyRunDir)
	cid := uint32(0)
	if vsock {
		cid = keyCID
	}
	for _, a := range commandLine(&t, accel, nil, cid, filepath.Join(keyRunDir, vm.AgentTokenFile), debugConsole) {
		fmt.Fprintf(h, "%q\n", a)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileIdentity changes whenever a file is replaced or rewritten.
func fileIdentity(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("template key: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("template key: no stat for %s", path)
	}
	return fmt.Sprintf("%s size=%d mtime=%d ino=%d dev=%d", path, fi.Size(), fi.ModTime().UnixNano(), st.Ino, st.Dev), nil
}

// dir is a template's directory.
func (t *templates) dir(name string) string { return filepath.Join(t.root, name) }

// reclaim removes what a crash left in the store: half-built templates and
// the replaced ones a rename did not get to remove, with any QEMU still
// running from them (their command lines name paths inside).
func (t *templates) reclaim() {
	t.reclaimOnce.Do(func() {
		entries, err := os.ReadDir(t.root)
		if err != nil {
			return
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(t.root, e.Name())
			_ = vm.KillReferencing("/proc", p)
			_ = os.RemoveAll(p)
		}
	})
}

// lookup returns the directory of template name when it was built for key.
func (t *templates) lookup(name, key string) (string, bool) {
	dir := t.dir(name)
	data, err := os.ReadFile(filepath.Join(dir, templateMetaFile))
	if err != nil {
		return "", false
	}
	var meta templateMeta
	if json.Unmarshal(data, &meta) != nil || meta.Key != key {
		return "", false
	}
	return dir, true
}

// startBuild builds template name in the background unless a build of it
// is running; build does the work.
func (t *templates) startBuild(name string, build func(ctx context.Context) error, onErr func(error)) {
	t.mu.Lock()
	if t.building[name] || t.ctx.Err() != nil {
		t.mu.Unlock()
		return
	}
	t.building[name] = true
	t.wg.Add(1)
	t.mu.Unlock()
	go func() {
		defer t.wg.Done()
		ctx, cancel := context.WithTimeout(t.ctx, templateBuildTimeout)
		err := build(ctx)
		cancel()
		t.mu.Lock()
		delete(t.building, name)
		t.mu.Unlock()
		if err != nil {
			onErr(err)
		}
	}()
}

// close ends running builds and waits for them.
func (t *templates) close() {
	t.cancel()
	t.wg.Wait()
}

// install moves a finished build into place, replacing the old template.
// Clones restoring from the old one keep reading it through their open fd.
func (t *templates) install(tmp, name string) error {
	final := t.dir(name)
	var old string
	if _, err := os.Stat(final); err == nil {
		old = filepath.Join(t.root, "."+name+".old-"+randomSuffix())
		if err := os.Rename(final, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	if err := syncDir(t.root); err != nil {
		return err
	}
	if old != "" {
		return os.RemoveAll(old)
	}
	return nil
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// BuildTemplate builds (or rebuilds) the template spec.Template for VMs
// like spec, synchronously, and replaces the one in place. RunPodSandbox
// does not wait for it: Create starts a build in the background when the
// template is missing or stale and boots that VM cold.
func (d *Driver) BuildTemplate(ctx context.Context, spec *vm.Spec) error {
	if d.tpl == nil {
		return errors.New("qemu: templates are off (no template dir)")
	}
	if spec.Template == "" || strings.ContainsAny(spec.Template, "/.") {
		return fmt.Errorf("qemu: bad template name %q", spec.Template)
	}
	d.tpl.reclaim()
	bin, _, accel, err := d.resolve(ctx, spec)
	if err != nil {
		return err
	}
	key, err := templateKey(bin, spec, accel, hostHasVsock(), d.opts.DebugConsole)
	if err != nil {
		return err
	}
	return d.buildTemplate(ctx, spec, key)
}

func (d *Driver) buildTemplate(ctx context.Context, spec *vm.Spec, key string) (err error) {
	name := spec.Template
	log := d.opts.Log.WithField("template", name)
	if err := os.MkdirAll(d.tpl.root, 0o700); err != nil {
		return err
	}
	tmp := filepath.Join(d.tpl.root, "."+name+".build-"+randomSuffix())
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
			err = fmt.Errorf("qemu: build template %s: %w", name, err)
		}
	}()
	start := time.Now()
	tspec := templateSpec(spec, "tpl-"+name, filepath.Join(tmp, "run"))
	// The template boots as an accelerator already chosen: never a probe.
	v, err := d.create(ctx, &tspec, &clone{memPath: filepath.Join(tmp, templateMemFile)})
	if err != nil {
		return err
	}
	qv := v.(*qemuVM)
	defer func() { _ = v.Stop(context.Background()) }()
	if err := v.Start(ctx); err != nil {
		return err
	}
	// The guest is done booting once its agent answers. The connection
	// closes before the save: the clone's agent port starts with no host.
	client, err := agentclient.Wait(ctx, v.DialAgent)
	if err != nil {
		return fmt.Errorf("template agent: %w%s", err, qv.logTail())
	}
	client.Close()
	stateBytes, err := qv.saveState(ctx, filepath.Join(tmp, templateStateFile))
	if err != nil {
		return err
	}
	if err := writeToken(tmp, qv.token); err != nil {
		return err
	}
	if err := v.Stop(ctx); err != nil {
		return err
	}
	memFile := filepath.Join(tmp, templateMemFile)
	if err := punchZeroPages(memFile); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat(memFile, &st); err != nil {
		return err
	}
	took := time.Since(start)
	meta, err := json.Marshal(templateMeta{Key: key, Built: time.Now().UTC(), BuildMillis: took.Milliseconds(),
		StateBytes: stateBytes, RAMBytes: st.Blocks * 512})
	if err != nil {
		return err
	}
	if err := writeSynced(filepath.Join(tmp, templateMetaFile), meta); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	if err := d.tpl.install(tmp, name); err != nil {
		return err
	}
	log.WithFields(map[string]any{"took": took.String(), "stateBytes": stateBytes, "ramBytes": st.Blocks * 512}).Info("template built")
	return nil
}

// saveState pauses the guest and writes its RAM and device state to path
// through an fd (the seccomp sandbox forbids QEMU's exec: migration). The
// guest stays paused.
func (v *qemuVM) saveState(ctx context.Context, path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := v.qmp.Execute(ctx, "stop", nil, nil); err != nil {
		return 0, err
	}
	if err := v.ignoreSharedRAM(ctx); err != nil {
		return 0, err
	}
	if err := v.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "tplstate"}, f); err != nil {
		return 0, err
	}
	if err := v.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:tplstate"}, nil); err != nil {
		return 0, err
	}
	for {
		var st struct {
			Status string `json:"status"`
			Error  string `json:"error-desc"`
		}
		if err := v.qmp.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return 0, err
		}
		switch st.Status {
		case "completed":
			if err := f.Sync(); err != nil {
				return 0, err
			}
			fi, err := f.Stat()
			if err != nil {
				return 0, err
			}
			return fi.Size(), nil
		case "failed", "cancelled":
			return 0, fmt.Errorf("migration to file %s: %s%s", st.Status, st.Error, v.logTail())
		}
		select {
		case <-ctx.Done():
			_ = v.qmp.Execute(context.Background(), "migrate_cancel", nil, nil)
			return 0, ctx.Err()
		case <-v.Done():
			return 0, v.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// punchZeroPages turns the zero pages of the template's RAM file into holes:
// every clone copies the file's data, and a hole costs it nothing.
func punchZeroPages(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	const page = 4096
	zero := make([]byte, page)
	buf := make([]byte, 1<<20)
	runStart := int64(-1) // start of the current run of zero pages
	punch := func(end int64) error {
		if runStart < 0 {
			return nil
		}
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, runStart, end-runStart)
		runStart = -1
		return err
	}
	var off int64
	for {
		n, err := f.ReadAt(buf, off)
		for p := 0; p+page <= n; p += page {
			if bytes.Equal(buf[p:p+page], zero) {
				if runStart < 0 {
					runStart = off + int64(p)
				}
			} else if err := punch(off + int64(p)); err != nil {
				return err
			}
		}
		off += int64(n)
		if err != nil {
			if errors.Is(err, io.EOF) {
				if err := punch(off); err != nil {
					return err
				}
				return f.Sync()
			}
			return err
		}
	}
}

// ignoreSharedRAM leaves guest RAM out of the migration stream: it is in a
// file of its own on both sides.
func (v *qemuVM) ignoreSharedRAM(ctx context.Context) error {
	return v.qmp.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}, nil)
}

// writeToken writes an agent token into dir as vm.NewAgentToken does.
func writeToken(dir string, tok []byte) error {
	if len(tok) == 0 {
		return errors.New("template VM has no agent token")
	}
	f, err := os.OpenFile(filepath.Join(dir, vm.AgentTokenFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("agent token: %w", err)
	}
	_, err = f.Write(tok)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeTemplate drops a template a restore failed with, so the next VM
// rebuilds it rather than failing the same way.
func (t *templates) remove(name string) {
	old := filepath.Join(t.root, "."+name+".bad-"+randomSuffix())
	if err := os.Rename(t.dir(name), old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return
	}
	_ = os.RemoveAll(old)
}

func hostHasVsock() bool {
	_, err := os.Stat("/dev/vhost-vsock")
	return err == nil
}
