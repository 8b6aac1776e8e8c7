package main

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// critestNames are the references cri-tools v1.36.0 pulls (pkg/validate,
// pkg/framework, pkg/benchmark), minus the unreproducible digest reference.
var critestNames = []string{
	"registry.k8s.io/e2e-test-images/busybox:1.29-2",
	"registry.k8s.io/e2e-test-images/nginx:1.14-2",
	"registry.k8s.io/e2e-test-images/httpd:2.4.39-4",
	"registry.k8s.io/e2e-test-images/nonewprivs:1.3",
	"registry.k8s.io/pause:3.9",
	"k8s.gcr.io/pause:3.9",
	"gcr.io/k8s-staging-cri-tools/hostnet-nginx-" + runtime.GOARCH,
	"gcr.io/k8s-staging-cri-tools/test-image-user-uid",
	"gcr.io/k8s-staging-cri-tools/test-image-user-username",
	"gcr.io/k8s-staging-cri-tools/test-image-user-uid-group",
	"gcr.io/k8s-staging-cri-tools/test-image-user-username-group",
	"gcr.io/k8s-staging-cri-tools/test-image-predefined-group",
	"gcr.io/k8s-staging-cri-tools/test-image-latest",
	"gcr.io/k8s-staging-cri-tools/test-image-tag:test",
	"gcr.io/k8s-staging-cri-tools/test-image-tag:all",
	"gcr.io/k8s-staging-cri-tools/test-image-1:latest",
	"gcr.io/k8s-staging-cri-tools/test-image-2:latest",
	"gcr.io/k8s-staging-cri-tools/test-image-3:latest",
	"gcr.io/k8s-staging-cri-tools/test-image-tags:1",
	"gcr.io/k8s-staging-cri-tools/test-image-tags:2",
	"gcr.io/k8s-staging-cri-tools/test-image-tags:3",
	"public.ecr.aws/docker/library/busybox:1.35.0-glibc",
	"public.ecr.aws/docker/library/busybox:1-uclibc",
	"public.ecr.aws/docker/library/busybox:1",
	"public.ecr.aws/docker/library/busybox:1-glibc",
	"public.ecr.aws/docker/library/busybox:1-musl",
}

func catalogIndex(t *testing.T) map[string]int {
	t.Helper()
	idx := map[string]int{}
	for i, s := range catalog() {
		for _, n := range s.Names {
			if _, dup := idx[n]; dup {
				t.Errorf("name %s listed twice", n)
			}
			idx[n] = i
		}
	}
	return idx
}

func TestCatalogCoversCritest(t *testing.T) {
	idx := catalogIndex(t)
	for _, n := range critestNames {
		if _, ok := idx[n]; !ok {
			t.Errorf("critest image %s missing from catalog", n)
		}
	}
	if len(idx) != len(critestNames) {
		t.Errorf("catalog serves %d names, critest uses %d", len(idx), len(critestNames))
	}
}

func TestMirrorPaths(t *testing.T) {
	if err := checkCatalog(catalog()); err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{
		"registry.k8s.io/e2e-test-images/busybox:1.29-2":     "e2e-test-images/busybox:1.29-2",
		"k8s.gcr.io/pause:3.9":                               "pause:3.9",
		"gcr.io/k8s-staging-cri-tools/test-image-latest":     "k8s-staging-cri-tools/test-image-latest:latest",
		"public.ecr.aws/docker/library/busybox:1.35.0-glibc": "docker/library/busybox:1.35.0-glibc",
	} {
		repo, tag, err := mirrorPath(ref)
		if err != nil || repo+":"+tag != want {
			t.Errorf("mirrorPath(%s) = %s:%s, %v; want %s", ref, repo, tag, err, want)
		}
	}
	clash := []imageSpec{{Names: []string{"registry.k8s.io/x:1"}}, {Names: []string{"gcr.io/x:1"}}}
	if err := checkCatalog(clash); err == nil {
		t.Error("two images on mirror path x:1 not rejected")
	}
	hosts, err := mirroredHosts(catalog())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(hosts, " "); got != "gcr.io k8s.gcr.io public.ecr.aws registry.k8s.io" {
		t.Errorf("mirrored hosts = %s", got)
	}
}

// testBuild builds the whole catalog once per test binary; image builds
// need the real busybox-static and a Go toolchain (for nonewprivs).
var testBuild = sync.OnceValues(func() ([]v1.Image, error) {
	b, err := newBuilder(defaultBusybox, testShell(), findGo())
	if err != nil {
		return nil, err
	}
	return b.buildAll(catalog())
})

// testShell is Debian's busybox package, unpacked once per test binary;
// TestMain removes it.
var testShell = sync.OnceValue(func() string {
	bin, cleanup, err := resolveShell(context.Background(), shellFromDebian)
	if err != nil {
		testShellErr = err
		return ""
	}
	testShellCleanup = cleanup
	return bin
})

var (
	testShellErr     error
	testShellCleanup = func() {}
)

func TestMain(m *testing.M) {
	code := m.Run()
	testShellCleanup()
	os.Exit(code)
}

func needBuildTools(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(defaultBusybox); err != nil {
		t.Skip("needs Debian's busybox-static at " + defaultBusybox)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to fetch Debian's busybox package for the images' shell")
	}
	if testShell() == "" {
		t.Fatalf("shell busybox: %v", testShellErr)
	}
	if findGo() == "" {
		t.Skip("needs a go toolchain to build the nonewprivs helper")
	}
}

func builtImages(t *testing.T) []v1.Image {
	t.Helper()
	needBuildTools(t)
	imgs, err := testBuild()
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

func imageID(t *testing.T, img v1.Image) string {
	t.Helper()
	id, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func TestImageIDs(t *testing.T) {
	imgs := builtImages(t)
	idx := catalogIndex(t)
	id := func(n string) string { return imageID(t, imgs[idx[n]]) }

	// Every catalog entry is its own image; names of one entry share it.
	seen := map[string]string{}
	for i, s := range catalog() {
		got := imageID(t, imgs[i])
		if prev, ok := seen[got]; ok {
			t.Errorf("%s and %s share image ID %s", prev, s.Names[0], got)
		}
		seen[got] = s.Names[0]
	}
	const p = "gcr.io/k8s-staging-cri-tools/"
	if id("registry.k8s.io/pause:3.9") != id("k8s.gcr.io/pause:3.9") {
		t.Error("the two pause names must be one image")
	}
	if id(p+"test-image-tags:1") != id(p+"test-image-tags:3") {
		t.Error("test-image-tags:1..3 must be one image")
	}
	if id(p+"test-image-tag:test") == id(p+"test-image-tag:all") {
		t.Error("test-image-tag:test and :all must differ")
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	first := builtImages(t)
	// A fresh builder also recompiles the helper binary.
	b, err := newBuilder(defaultBusybox, testShell(), findGo())
	if err != nil {
		t.Fatal(err)
	}
	second, err := b.buildAll(catalog())
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range catalog() {
		d1, _ := first[i].Digest()
		d2, _ := second[i].Digest()
		if d1 != d2 {
			t.Errorf("%s: manifest digest %s then %s", s.Names[0], d1, d2)
		}
	}
}

// layerFiles reads all tar headers of the image's layers, later layers
// overriding earlier ones, with file contents for small regular files.
func layerFiles(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string]string) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string]string{}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := strings.TrimSuffix(h.Name, "/")
			hdrs[name] = h
			if h.Typeflag == tar.TypeReg && h.Size < 1<<20 {
				b, _ := io.ReadAll(tr)
				data[name] = string(b)
			}
		}
		rc.Close()
	}
	return hdrs, data
}

func TestImageContents(t *testing.T) {
	imgs := builtImages(t)
	idx := catalogIndex(t)
	get := func(n string) v1.Image { return imgs[idx[n]] }

	hdrs, data := layerFiles(t, get("registry.k8s.io/e2e-test-images/busybox:1.29-2"))
	// Commands critest runs inside the default image.
	for _, c := range []string{"bin/sh", "bin/echo", "bin/sleep", "usr/bin/top", "usr/bin/pgrep", "bin/pidof",
		"bin/ls", "bin/cat", "bin/hostname", "bin/netstat", "usr/bin/ipcs", "usr/bin/id", "bin/touch",
		"bin/mount", "bin/mkdir", "bin/grep", "bin/chmod", "usr/sbin/brctl", "bin/ping", "bin/dd"} {
		if _, ok := hdrs[c]; !ok {
			t.Errorf("busybox image lacks /%s", c)
		}
	}
	if h := hdrs["tmp"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("/tmp header %+v, want mode 1777", h)
	}
	for _, l := range []string{"nobody:x:65534:65534:", "www-data:x:33:33:"} {
		if !strings.Contains(data["etc/passwd"], l) {
			t.Errorf("/etc/passwd lacks %q", l)
		}
	}
	if !strings.Contains(data["etc/group"], "nogroup:x:65534:") {
		t.Error("/etc/group lacks nogroup")
	}

	hdrs, _ = layerFiles(t, get("registry.k8s.io/e2e-test-images/nonewprivs:1.3"))
	if h := hdrs["usr/local/bin/nnp"]; h == nil || h.Mode != 0o4755 || h.Uid != 0 {
		t.Errorf("nnp header %+v, want setuid root", h)
	}

	for ref, want := range map[string]string{
		"gcr.io/k8s-staging-cri-tools/test-image-user-uid":            "1002",
		"gcr.io/k8s-staging-cri-tools/test-image-user-username":       "www-data",
		"gcr.io/k8s-staging-cri-tools/test-image-user-uid-group":      "1003:1004",
		"gcr.io/k8s-staging-cri-tools/test-image-user-username-group": "www-data:1004",
		"gcr.io/k8s-staging-cri-tools/test-image-predefined-group":    "1000",
		"registry.k8s.io/e2e-test-images/nonewprivs:1.3":              "1000",
	} {
		cf, err := get(ref).ConfigFile()
		if err != nil || cf.Config.User != want {
			t.Errorf("%s: USER %q (%v), want %q", ref, cf.Config.User, err, want)
		}
	}
	cf, err := get("registry.k8s.io/e2e-test-images/nginx:1.14-2").ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(cf.Config.Cmd, " "), "master process") {
		t.Errorf("nginx Cmd %q must put \"master process\" into PID 1's cmdline", cf.Config.Cmd)
	}
	if _, ok := cf.Config.ExposedPorts["80/tcp"]; !ok || !cf.Created.Equal(epoch) {
		t.Errorf("nginx config: ports %v created %v", cf.Config.ExposedPorts, cf.Created)
	}
}

// TestFallbackScripts runs the pgrep and ipcs stand-ins with the same
// busybox shell and awk they get in the image.
func TestFallbackScripts(t *testing.T) {
	if _, err := os.Stat(defaultBusybox); err != nil {
		t.Skip("needs " + defaultBusybox)
	}
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pgrep, ipcs := script("pgrep", pgrepScript), script("ipcs", ipcsScript)

	// Run busybox as "sleep" so the process name is what pgrep matches.
	if err := os.Symlink(defaultBusybox, filepath.Join(dir, "sleep")); err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command(filepath.Join(dir, "sleep"), "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	out, err := exec.Command(defaultBusybox, "sh", pgrep, "sleep").Output()
	if err != nil || !strings.Contains(string(out), strconv.Itoa(sleep.Process.Pid)) {
		t.Errorf("pgrep sleep = %q, %v; want pid %d", out, err, sleep.Process.Pid)
	}
	cmd := exec.Command(defaultBusybox, "sh", pgrep, "no-such-process-name")
	if out, err := cmd.Output(); err == nil || len(out) != 0 {
		t.Errorf("pgrep of nothing = %q, %v; want no output and exit 1", out, err)
	}
	out, err = exec.Command(defaultBusybox, "sh", ipcs, "-m").Output()
	if err != nil || !strings.Contains(string(out), "Shared Memory Segments") {
		t.Errorf("ipcs -m = %q, %v", out, err)
	}
}

// TestShellSearchesPath is why the images carry a second busybox: a masked
// /bin/ls must be what sh tries to run (critest's MaskedPaths spec).
func TestShellSearchesPath(t *testing.T) {
	needBuildTools(t)
	shell := testShell()
	out, err := exec.Command(shell, "sh", "-c", "PATH=/nonexistent; ls /").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ls: not found") {
		t.Errorf("shell busybox ran ls without PATH (%v, %q): it must not be a standalone shell", err, out)
	}
	out, err = exec.Command(defaultBusybox, "sh", "-c", "PATH=/nonexistent; ls / >/dev/null && echo standalone").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "standalone") {
		t.Logf("busybox-static is no longer a standalone shell (%v, %q): shell.go may be unnecessary", err, out)
	}

	hdrs, _ := layerFiles(t, builtImages(t)[catalogIndex(t)["registry.k8s.io/e2e-test-images/busybox:1.29-2"]])
	for _, p := range shellApplets {
		if h := hdrs[p]; h == nil || h.Linkname != shellBinary {
			t.Errorf("/%s = %+v, want a hard link to /%s", p, h, shellBinary)
		}
	}
	if h := hdrs["bin/ls"]; h == nil || h.Linkname != "bin/busybox" {
		t.Errorf("/bin/ls = %+v, want busybox-static", h)
	}
	deps, err := sharedObjects(shell)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deps {
		if _, ok := hdrs[strings.TrimPrefix(d, "/")]; !ok {
			t.Errorf("image lacks %s, which the shell loads", d)
		}
	}
}
