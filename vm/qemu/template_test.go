package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/vm"
)

// keyFixture is a guest and a "QEMU binary" on disk, since the key reads
// their identities.
type keyFixture struct {
	bin  string
	spec vm.Spec
}

func newKeyFixture(t *testing.T) keyFixture {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"qemu", "vmlinuz", "initramfs"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return keyFixture{bin: filepath.Join(dir, "qemu"), spec: vm.Spec{
		ID: "pod1", RunDir: "/run/cocoon/vm/pod1", Template: "cocoon",
		Kernel: filepath.Join(dir, "vmlinuz"), Initramfs: filepath.Join(dir, "initramfs"),
		KernelArgs: []string{"cocoon.log=info"}, VCPUs: 1, MaxVCPUs: 4, MemoryMiB: 256, MaxMemoryMiB: 2048,
		Shares: []vm.Share{{Tag: "cocoon", Source: "/run/cocoon/sandboxes/pod1/share"}},
		Accel:  "tcg",
	}}
}

func (f keyFixture) key(t *testing.T, spec *vm.Spec, debug bool) string {
	t.Helper()
	k, err := templateKey(f.bin, spec, "tcg", false, debug)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestTemplateKeyIgnoresWhatDiffersPerClone(t *testing.T) {
	f := newKeyFixture(t)
	base := f.key(t, &f.spec, false)
	other := f.spec
	mac, _ := net.ParseMAC("02:00:00:00:00:09")
	other.ID, other.RunDir = "pod2", "/run/cocoon/vm/pod2"
	other.Shares = []vm.Share{{Tag: "cocoon", Source: "/elsewhere"}}
	other.NICs = []vm.NIC{{ID: "eth0", MAC: mac, Tap: os.Stdin}}
	if got := f.key(t, &other, false); got != base {
		t.Fatal("two pods of one handler get different template keys")
	}
}

func TestTemplateKeyChanges(t *testing.T) {
	cases := []struct {
		name   string
		change func(t *testing.T, f *keyFixture, spec *vm.Spec) bool // returns the debug console
	}{
		{"new initramfs", func(t *testing.T, f *keyFixture, spec *vm.Spec) bool {
			replaceFile(t, spec.Initramfs, "initramfs v2")
			return false
		}},
		{"new kernel", func(t *testing.T, f *keyFixture, spec *vm.Spec) bool {
			replaceFile(t, spec.Kernel, "vmlinuz v2")
			return false
		}},
		{"new QEMU binary", func(t *testing.T, f *keyFixture, spec *vm.Spec) bool {
			replaceFile(t, f.bin, "qemu 8")
			return false
		}},
		{"other kernel args", func(t *testing.T, f *keyFixture, spec *vm.Spec) bool {
			spec.KernelArgs = []string{"cocoon.log=debug"}
			return false
		}},
		{"more memory", func(t *testing.T, f *keyFixture, spec *vm.Spec) bool {
			spec.MemoryMiB = 512
			return false
		}},
		{"more vCPUs", func(t *testing.T, f *keyFixture, spec *vm.Spec) bool {
			spec.VCPUs = 2
			return false
		}},
		{"debug console", func(t *testing.T, f *keyFixture, spec *vm.Spec) bool {
			return true
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newKeyFixture(t)
			before := f.key(t, &f.spec, false)
			spec := f.spec
			debug := tc.change(t, &f, &spec)
			if f.key(t, &spec, debug) == before {
				t.Fatal("template key did not change")
			}
		})
	}
}

// replaceFile writes a new file and renames it over path, as a guest
// rebuild or a package upgrade does.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestCloneCommandLine(t *testing.T) {
	f := newKeyFixture(t)
	mac, _ := net.ParseMAC("02:00:00:00:00:09")
	spec := f.spec
	spec.NICs = []vm.NIC{{ID: "eth0", MAC: mac, Tap: os.Stdin}}
	token := filepath.Join(spec.RunDir, vm.AgentTokenFile)
	c := &clone{state: os.Stdin, mem: os.Stdin} // stand-ins: only set or not matters here
	got := c.commandLine(&spec, "tcg", 0, token, false)
	tspec := templateSpec(&spec, spec.ID, spec.RunDir)
	want := append(withMemoryFile(commandLine(&tspec, "tcg", nil, 0, token, false), "/proc/self/fd/3"), "-incoming", "defer")
	if !slices.Equal(got, want) {
		t.Fatalf("clone command line\n got %q\nwant %q", got, want)
	}
	joined := strings.Join(got, " ")
	for _, never := range []string{"vhost-user-fs", "netdev", spec.Shares[0].Source, "memory-backend-memfd"} {
		if strings.Contains(joined, never) {
			t.Errorf("clone command line has %q: those devices are plugged after the restore", never)
		}
	}
	for _, must := range []string{"-S", "memory-backend-file,id=mem,mem-path=/proc/self/fd/3,size=256M,share=on", "pcie-root-port", spec.RunDir + "/qmp.sock"} {
		if !strings.Contains(joined, must) {
			t.Errorf("clone command line lacks %q", must)
		}
	}
}

func TestTemplateLookupAndInstall(t *testing.T) {
	root := t.TempDir()
	store := newTemplates(root)
	if _, ok := store.lookup("cocoon", "k1"); ok {
		t.Fatal("found a template in an empty store")
	}
	build := func(key string) string {
		tmp := filepath.Join(root, ".cocoon.build-"+key)
		if err := os.Mkdir(tmp, 0o700); err != nil {
			t.Fatal(err)
		}
		meta, _ := json.Marshal(templateMeta{Key: key})
		if err := writeSynced(filepath.Join(tmp, templateMetaFile), meta); err != nil {
			t.Fatal(err)
		}
		return tmp
	}
	if err := store.install(build("k1"), "cocoon"); err != nil {
		t.Fatal(err)
	}
	if _, ok := store.lookup("cocoon", "k1"); !ok {
		t.Fatal("installed template not found")
	}
	if _, ok := store.lookup("cocoon", "k2"); ok {
		t.Fatal("a template built for another key counts as current")
	}
	if err := store.install(build("k2"), "cocoon"); err != nil {
		t.Fatal(err)
	}
	if _, ok := store.lookup("cocoon", "k2"); !ok {
		t.Fatal("rebuilt template not found")
	}
	assertOnlyTemplates(t, root, "cocoon")

	// What a crash leaves (a half build, a replaced template) goes at the
	// first use; templates stay.
	for _, d := range []string{".cocoon.build-x", ".cocoon.old-y"} {
		if err := os.MkdirAll(filepath.Join(root, d, "run"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	store = newTemplates(root)
	store.reclaim()
	assertOnlyTemplates(t, root, "cocoon")
	store.remove("cocoon")
	assertOnlyTemplates(t, root)
}

func assertOnlyTemplates(t *testing.T, root string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Fatalf("template dir holds %v, want %v", got, names)
	}
}

func TestBuildsRunOnceAndStopOnClose(t *testing.T) {
	store := newTemplates(t.TempDir())
	started := make(chan struct{})
	var runs int
	block := func(ctx context.Context) error {
		runs++
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}
	var failed error
	store.startBuild("cocoon", block, func(err error) { failed = err })
	<-started
	store.startBuild("cocoon", block, func(error) { t.Error("second build of one template ran") })
	store.close()
	if runs != 1 || !errors.Is(failed, context.Canceled) {
		t.Fatalf("runs %d, build error %v", runs, failed)
	}
	store.startBuild("cocoon", block, func(error) {})
	if runs != 1 {
		t.Fatal("a build started after close")
	}
}

func TestTemplateBuildCommandLine(t *testing.T) {
	f := newKeyFixture(t)
	c := &clone{memPath: "/var/lib/cocoon/templates/.x/memory"}
	joined := strings.Join(c.commandLine(&f.spec, "tcg", 0, "/tok", false), " ")
	if !strings.Contains(joined, "memory-backend-file,id=mem,mem-path=/var/lib/cocoon/templates/.x/memory,size=256M,share=on") {
		t.Errorf("template RAM is not its file: %s", joined)
	}
	for _, never := range []string{"-incoming", "vhost-user-fs"} {
		if strings.Contains(joined, never) {
			t.Errorf("template command line has %q", never)
		}
	}
}

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src, err := os.Create(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const size = 8 << 20
	if err := src.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// Data at the start, in the middle and at the end; holes between.
	chunks := map[int64]string{0: "first", 3 << 20: "middle", size - 4096: "last page"}
	for off, s := range chunks {
		if _, err := src.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
	dst, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := copySparse(dst, src); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(src.Name())
	got, _ := os.ReadFile(dst.Name())
	if !slices.Equal(got, want) {
		t.Fatal("copy differs from the source")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(dst.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= size/2 {
		t.Fatalf("copy allocates %d bytes of %d: holes were filled", st.Blocks*512, size)
	}
}

func TestPunchZeroPages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "memory")
	data := make([]byte, 64*4096)
	copy(data[5*4096:], "used page")
	copy(data[63*4096+100:], "last page")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := punchZeroPages(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !slices.Equal(got, data) {
		t.Fatalf("contents changed: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 8*4096 { // two data pages, some slack for the filesystem
		t.Fatalf("%d bytes still allocated, want about two pages", st.Blocks*512)
	}
}
