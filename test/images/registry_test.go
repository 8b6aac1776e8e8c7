package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func needRegistry(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(defaultRegistry); err != nil {
		t.Skip("needs Debian's docker-registry at " + defaultRegistry)
	}
	if _, err := os.Stat(defaultBusybox); err != nil {
		t.Skip("needs Debian's busybox-static at " + defaultBusybox)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// fetchManifest GETs repo:tag and returns its digest header.
func fetchManifest(t *testing.T, addr, repo, tag string) (string, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s %s", repo, tag, resp.Status, body.String())
	}
	return resp.Header.Get("Docker-Content-Digest"), body.Bytes()
}

func TestPushToRealRegistry(t *testing.T) {
	needRegistry(t)
	ctx := context.Background()
	dir, addr := t.TempDir(), freeAddr(t)
	pid, err := startRegistry(ctx, defaultRegistry, dir, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if stopped, err := stopRegistry(dir); err != nil || !stopped {
			t.Errorf("stopRegistry: stopped %v, %v", stopped, err)
		}
		if alive(pid) {
			t.Errorf("registry pid %d still running", pid)
		}
	})

	b, err := newBuilder(defaultBusybox, "", "")
	if err != nil {
		t.Fatal(err)
	}
	// The two-name pause image exercises blob mounting and tag skipping,
	// and builds without a Go toolchain.
	var specs []imageSpec
	for _, s := range catalog() {
		if s.Names[0] == "registry.k8s.io/pause:3.9" {
			specs = append(specs, s)
		}
	}
	imgs, err := b.buildAll(specs)
	if err != nil {
		t.Fatal(err)
	}
	res, err := pushAll(ctx, addr, specs, imgs)
	if err != nil {
		t.Fatal(err)
	}
	// Both names land on pause:3.9, so the second finds it in place.
	if res.Pushed != 1 || res.Skipped != 1 {
		t.Errorf("first push: %+v, want 1 pushed 1 skipped", res)
	}
	want, _ := imgs[0].Digest()
	got, raw := fetchManifest(t, addr, "pause", "3.9")
	if got != want.String() {
		t.Errorf("registry has %s, built %s", got, want)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil || len(m.Layers) != 2 {
		t.Errorf("manifest %s: %v", raw, err)
	}
	if res, err := pushAll(ctx, addr, specs, imgs); err != nil || res.Pushed != 0 {
		t.Errorf("second push: %+v, %v; want nothing pushed", res, err)
	}
}

// TestUpDown drives the commands end to end: up builds and pushes the whole
// catalog, a second up pushes nothing, down stops the registry and removes
// its directory, and a second down is a no-op.
func TestUpDown(t *testing.T) {
	needRegistry(t)
	needBuildTools(t)
	dir, addr := filepath.Join(t.TempDir(), "registry"), freeAddr(t)
	t.Cleanup(func() { _, _ = stopRegistry(dir) })
	var out bytes.Buffer
	args := []string{"up", "--addr", addr, "--dir", dir}
	if err := run(args, &out); err != nil {
		t.Fatal(err)
	}
	pid, err := readPid(dir)
	if err != nil || !isRegistry(pid) {
		t.Fatalf("no registry running after up (pid %d, %v)", pid, err)
	}
	out.Reset()
	if err := run(args, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), " 0 tags pushed") {
		t.Errorf("second up pushed again: %s", out.String())
	}
	for _, n := range critestNames {
		repo, tag, _ := mirrorPath(n)
		fetchManifest(t, addr, repo, tag)
	}
	conf, err := os.ReadFile(filepath.Join(dir, confFile))
	if err != nil || !strings.Contains(string(conf), `prefix = "registry.k8s.io"`) {
		t.Errorf("registries.conf: %v\n%s", err, conf)
	}

	if err := run([]string{"down", "--dir", dir}, &out); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		t.Errorf("registry pid %d survived down", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after down: %v", dir, err)
	}
	if err := run([]string{"down", "--dir", dir}, &out); err != nil {
		t.Errorf("second down: %v", err)
	}
}
