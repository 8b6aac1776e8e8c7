package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const busybox = "registry.k8s.io/e2e-test-images/busybox:1.29-2"

func spec(ref string) *runtimeapi.ImageSpec { return &runtimeapi.ImageSpec{Image: ref} }

func pull(t *testing.T, e *env, ref string) string {
	t.Helper()
	resp, err := e.images.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: spec(ref)})
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return resp.ImageRef
}

func imageStatus(t *testing.T, e *env, ref string) *runtimeapi.Image {
	t.Helper()
	resp, err := e.images.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{Image: spec(ref)})
	if err != nil {
		t.Fatalf("status %s: %v", ref, err)
	}
	return resp.Image
}

func remove(t *testing.T, e *env, ref string) {
	t.Helper()
	if _, err := e.images.RemoveImage(ctxT(t), &runtimeapi.RemoveImageRequest{Image: spec(ref)}); err != nil {
		t.Fatalf("remove %s: %v", ref, err)
	}
}

func TestPullThroughMirrorIdentity(t *testing.T) {
	e := requireEnv(t)
	ref := pull(t, e, busybox)
	img := imageStatus(t, e, busybox)
	if img == nil || img.Id != ref || !strings.HasPrefix(ref, "sha256:") {
		t.Fatalf("image_ref %q, status %v", ref, img)
	}
	if !slices.Equal(img.RepoTags, []string{busybox}) || len(img.RepoDigests) != 1 || img.Size == 0 {
		t.Fatalf("status fields: %+v", img)
	}
	list, err := e.images.ListImages(ctxT(t), &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: spec(busybox)}})
	if err != nil || len(list.Images) != 1 || list.Images[0].Id != ref {
		t.Fatalf("filtered list: %v, %v", list, err)
	}
	// Status by digest and by ID is the same image.
	for _, other := range []string{img.RepoDigests[0], ref, strings.TrimPrefix(ref, "sha256:")[:12]} {
		if got := imageStatus(t, e, other); got == nil || got.Id != ref {
			t.Fatalf("status by %q: %v", other, got)
		}
	}
	verbose, err := e.images.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{Image: spec(ref), Verbose: true})
	if err != nil || !strings.Contains(verbose.Info["info"], `"imageSpec"`) {
		t.Fatalf("verbose status: %v, %v", verbose, err)
	}
}

func TestPullErrorCodes(t *testing.T) {
	e := requireEnv(t)
	for _, tt := range []struct {
		name    string
		ref     string
		timeout time.Duration
		want    codes.Code
	}{
		{name: "malformed reference", ref: "Not A Reference!", want: codes.InvalidArgument},
		{name: "empty reference", ref: "", want: codes.InvalidArgument},
		{name: "missing image", ref: registryAddr + "/no/such-image:1", want: codes.NotFound},
		{name: "deadline", ref: "gcr.io/k8s-staging-cri-tools/test-image-tag:test", timeout: time.Millisecond, want: codes.DeadlineExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			_, err := e.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec(tt.ref)})
			if got := status.Code(err); got != tt.want {
				t.Fatalf("code %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	// Status and remove of a missing image are not errors (CRI).
	if img := imageStatus(t, e, registryAddr+"/no/such-image:1"); img != nil {
		t.Fatalf("status of a missing image: %v", img)
	}
	remove(t, e, registryAddr+"/no/such-image:1")
}

func TestImageUsers(t *testing.T) {
	e := requireEnv(t)
	const prefix = "gcr.io/k8s-staging-cri-tools/"
	for _, tt := range []struct {
		image    string
		uid      int64
		username string
	}{
		{"test-image-user-uid", 1002, ""},
		{"test-image-user-username", 0, "www-data"},
		{"test-image-user-uid-group", 1003, ""},
		{"test-image-user-username-group", 0, "www-data"},
	} {
		pull(t, e, prefix+tt.image)
		img := imageStatus(t, e, prefix+tt.image)
		if img.GetUid().GetValue() != tt.uid || img.Username != tt.username {
			t.Errorf("%s: uid %v username %q", tt.image, img.GetUid(), img.Username)
		}
		remove(t, e, prefix+tt.image)
	}
}

func TestRemoveByDigestRemovesEveryTag(t *testing.T) {
	e := requireEnv(t)
	tags := []string{
		"gcr.io/k8s-staging-cri-tools/test-image-tags:1",
		"gcr.io/k8s-staging-cri-tools/test-image-tags:2",
		"gcr.io/k8s-staging-cri-tools/test-image-tags:3",
	}
	var ids []string
	for _, tag := range tags {
		ids = append(ids, pull(t, e, tag))
	}
	if len(slices.Compact(slices.Clone(ids))) != 1 {
		t.Fatalf("one image, three tags, got IDs %v", ids)
	}
	img := imageStatus(t, e, tags[0])
	if len(img.RepoTags) != 3 {
		t.Fatalf("repo tags %v", img.RepoTags)
	}
	remove(t, e, img.RepoDigests[0])
	for _, ref := range append(tags, ids[0]) {
		if got := imageStatus(t, e, ref); got != nil {
			t.Fatalf("%s still there after removal by digest", ref)
		}
	}
}

func TestImageFsInfoGrowsWithPull(t *testing.T) {
	e := requireEnv(t)
	const ref = "gcr.io/k8s-staging-cri-tools/test-image-1:latest"
	remove(t, e, ref)
	used := func() uint64 {
		resp, err := e.images.ImageFsInfo(ctxT(t), &runtimeapi.ImageFsInfoRequest{})
		if err != nil || len(resp.ImageFilesystems) != 1 {
			t.Fatalf("fsinfo: %v, %v", resp, err)
		}
		return resp.ImageFilesystems[0].UsedBytes.Value
	}
	before := used()
	pull(t, e, ref)
	if after := used(); after <= before {
		t.Fatalf("used bytes %d after pull, %d before", after, before)
	}
	remove(t, e, ref)
}

func TestRuntimeInfo(t *testing.T) {
	e := requireEnv(t)
	v, err := e.runtime.Version(ctxT(t), &runtimeapi.VersionRequest{})
	if err != nil || v.RuntimeName != "cocoon" || v.RuntimeApiVersion != "v1" {
		t.Fatalf("version: %v, %v", v, err)
	}
	st, err := e.runtime.Status(ctxT(t), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Status.Conditions {
		if !c.Status {
			t.Errorf("condition %s false: %s %s", c.Type, c.Reason, c.Message)
		}
	}
	if !strings.Contains(st.Info["config"], `"graph_root"`) {
		t.Errorf("verbose info lacks the config: %v", st.Info)
	}
}

// TestDaemonLifecycle checks a bad config is refused naming file and key, and
// that SIGTERM leaves no socket and no mount behind.
func TestDaemonLifecycle(t *testing.T) {
	e := requireEnv(t)
	dir := t.TempDir()
	cfg, err := writeConfig(e.bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	dropIn := filepath.Join(dir, "config.d", "50-bad.toml")
	if err := os.MkdirAll(filepath.Dir(dropIn), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dropIn, []byte("[image]\ndriver = \"zfs\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(e.bin, "cocoond"), "--config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "50-bad.toml") || !strings.Contains(string(out), "image.driver") {
		t.Fatalf("bad drop-in accepted or not named: %v\n%s", err, out)
	}
	os.Remove(dropIn)

	d, err := startDaemon(e.bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.images.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: spec(busybox)}); err != nil {
		_ = d.stop() // the pull failure is what the test reports
		t.Fatal(err)
	}
	if err := d.shutdown(); err != nil {
		t.Fatalf("unclean exit on SIGTERM: %v", err)
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	if m := mountsUnder(dir); len(m) > 0 {
		t.Fatalf("mounts left behind: %v", m)
	}
}
