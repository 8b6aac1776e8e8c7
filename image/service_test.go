package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"

	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/errdefs"
)

// testRegistry is a real registry on loopback that counts blob fetches and,
// when private, demands basic auth on every path as real registries do.
type testRegistry struct {
	host       string
	blobGets   atomic.Int64
	slowBlobs  atomic.Bool // delays blob fetches so concurrent pulls overlap
	user, pass string
}

func newTestRegistry(t *testing.T, private bool) *testRegistry {
	r := &testRegistry{user: "alice", pass: "s3cret"}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if private {
			u, p, ok := req.BasicAuth()
			if !ok || u != r.user || p != r.pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			r.blobGets.Add(1)
			if r.slowBlobs.Load() {
				time.Sleep(300 * time.Millisecond)
			}
		}
		inner.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

// push writes a random two-layer image with user set in its config and returns its config digest.
func (r *testRegistry) push(t *testing.T, user string, refs ...string) v1.Hash {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.Config.User = user
	cf.Config.Labels = map[string]string{"test": "yes"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		tag, err := name.ParseReference(r.host+"/"+ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(tag, img, remote.WithAuth(&authn.Basic{Username: r.user, Password: r.pass})); err != nil {
			t.Fatal(err)
		}
	}
	id, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newTestService(t *testing.T, regs ...*testRegistry) *Service {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: containers/storage needs root to create layers (run as root, as CI does)")
	}
	dir := t.TempDir()
	regConf := filepath.Join(dir, "registries.conf")
	var body string
	for _, reg := range regs {
		body += fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", reg.host)
	}
	if err := os.WriteFile(regConf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Image{
		GraphRoot:            filepath.Join(dir, "graph"),
		RunRoot:              filepath.Join(dir, "run"),
		Driver:               "vfs",
		RegistriesConf:       regConf,
		SignaturePolicy:      filepath.Join(dir, "no-policy.json"),
		PullProgressInterval: config.Duration(time.Second),
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	s, err := New(cfg, logrus.NewEntry(log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPullListStatusRemove(t *testing.T) {
	reg := newTestRegistry(t, false)
	s := newTestService(t, reg)
	ctx := context.Background()
	cfgDigest := reg.push(t, "www-data:1004", "app/web:1", "app/web:2")
	wantID := "sha256:" + cfgDigest.Hex

	res, err := s.Pull(ctx, reg.host+"/app/web:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != wantID {
		t.Fatalf("pull returned %s, want config digest %s", res.ID, wantID)
	}
	if _, err := s.Pull(ctx, reg.host+"/app/web:2", nil); err != nil {
		t.Fatal(err)
	}

	img, err := s.Status(ctx, reg.host+"/app/web:1")
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != wantID || len(img.RepoTags) != 2 || len(img.RepoDigests) != 1 || img.Size == 0 {
		t.Fatalf("status: %+v", img)
	}
	if _, _, user := img.User(); user != "www-data" {
		t.Fatalf("username = %q, want www-data", user)
	}
	// Every way of naming the image finds the same one.
	for _, ref := range []string{wantID, cfgDigest.Hex, cfgDigest.Hex[:12], img.RepoTags[1], img.RepoDigests[0]} {
		got, err := s.Status(ctx, ref)
		if err != nil || got.ID != wantID {
			t.Fatalf("status(%q) = %v, %v", ref, got, err)
		}
	}
	list, err := s.List(ctx, "")
	if err != nil || len(list) != 1 {
		t.Fatalf("list = %v, %v", list, err)
	}
	if filtered, _ := s.List(ctx, reg.host+"/app/other:1"); len(filtered) != 0 {
		t.Fatalf("filter by a missing image listed %v", filtered)
	}

	// Removing by one tag removes the image with all its tags; again is fine.
	if err := s.Remove(ctx, reg.host+"/app/web:2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, reg.host+"/app/web:2"); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if err := s.Remove(ctx, strings.Repeat("0", 64)); err != nil {
		t.Fatalf("removing an unknown full ID: %v", err)
	}
	for _, ref := range []string{reg.host + "/app/web:1", wantID} {
		if _, err := s.Status(ctx, ref); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("status(%q) after remove: %v", ref, err)
		}
	}
}

func TestPullErrors(t *testing.T) {
	reg := newTestRegistry(t, false)
	priv := newTestRegistry(t, true)
	s := newTestService(t, reg, priv)
	priv.push(t, "", "private/secret:1")

	tests := []struct {
		name string
		ref  string
		auth *Auth
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{name: "malformed reference", ref: "UPPER/Case::bad", want: errdefs.ErrInvalidArgument},
		{name: "missing tag", ref: reg.host + "/app/none:1", want: errdefs.ErrNotFound},
		{name: "no credentials", ref: priv.host + "/private/secret:1", want: errdefs.ErrUnauthenticated},
		{name: "wrong credentials", ref: priv.host + "/private/secret:1", auth: &Auth{Username: "alice", Password: "nope"}, want: errdefs.ErrUnauthenticated},
		{name: "bad base64 auth", ref: priv.host + "/private/secret:1", auth: &Auth{Auth: "%%%"}, want: errdefs.ErrInvalidArgument},
		{name: "credentials from the request", ref: priv.host + "/private/secret:1", auth: &Auth{Auth: "YWxpY2U6czNjcmV0"}}, // alice:s3cret
		{
			name: "deadline", ref: priv.host + "/private/secret:1", auth: &Auth{Username: "alice", Password: "s3cret"},
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), time.Millisecond)
			},
			want: context.DeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			if tt.want == context.DeadlineExceeded {
				_ = s.Remove(context.Background(), priv.host+"/private/secret:1")
				time.Sleep(2 * time.Millisecond)
			}
			_, err := s.Pull(ctx, tt.ref, tt.auth)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// fakePulls records pull observations.
type fakePulls struct {
	mu    sync.Mutex
	bytes []uint64
	errs  []error
}

func (f *fakePulls) ObservePull(bytes uint64, _ time.Duration, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bytes = append(f.bytes, bytes)
	f.errs = append(f.errs, err)
}

func TestPullObserver(t *testing.T) {
	reg := newTestRegistry(t, false)
	s := newTestService(t, reg)
	obs := &fakePulls{}
	WithPullObserver(obs)(s)
	reg.push(t, "", "app/seen:1")
	ctx := context.Background()
	if _, err := s.Pull(ctx, reg.host+"/app/seen:1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, reg.host+"/app/none:1", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing image: %v", err)
	}
	// A malformed reference never starts a download: nothing to observe.
	if _, err := s.Pull(ctx, "UPPER/Case::bad", nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("malformed reference: %v", err)
	}
	if len(obs.errs) != 2 || obs.errs[0] != nil || obs.bytes[0] == 0 || !errors.Is(obs.errs[1], errdefs.ErrNotFound) {
		t.Fatalf("observed bytes %v errors %v", obs.bytes, obs.errs)
	}
}

func TestConcurrentPullsShareOneDownload(t *testing.T) {
	reg := newTestRegistry(t, false)
	s := newTestService(t, reg)
	obs := &fakePulls{}
	WithPullObserver(obs)(s)
	reg.push(t, "1000", "app/shared:1")
	reg.slowBlobs.Store(true)
	before := reg.blobGets.Load()

	const callers = 6
	var wg sync.WaitGroup
	ids := make([]string, callers)
	shared := make([]bool, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.Pull(context.Background(), reg.host+"/app/shared:1", nil)
			ids[i], shared[i], errs[i] = res.ID, res.Shared, err
		}()
	}
	wg.Wait()
	nShared := 0
	for i := range callers {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("caller %d: %s, %v", i, ids[i], errs[i])
		}
		if shared[i] {
			nShared++
		}
	}
	// One config and two layers: three blobs, fetched once for all callers.
	if got := reg.blobGets.Load() - before; got != 3 {
		t.Fatalf("%d blob fetches for %d concurrent pulls, want 3", got, callers)
	}
	if nShared != callers-1 {
		t.Fatalf("%d callers joined the first pull, want %d", nShared, callers-1)
	}
	if len(obs.errs) != 1 {
		t.Fatalf("%d pulls observed for one shared download", len(obs.errs))
	}
}

func TestAbandonedPullIsCancelled(t *testing.T) {
	var g pullGroup
	g.m = map[string]*flight{}
	stopped := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	_, err := g.do(ctx, "k", func(fctx context.Context) (PullResult, error) {
		<-fctx.Done() // only ends when the group gives up on it
		close(stopped)
		return PullResult{}, fctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		t.Fatal("download kept running after its only caller left")
	}
}

func TestSimultaneousRemovesAllSucceed(t *testing.T) {
	reg := newTestRegistry(t, false)
	s := newTestService(t, reg)
	reg.push(t, "", "app/gone:1")
	res, err := s.Pull(context.Background(), reg.host+"/app/gone:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = s.Remove(context.Background(), res.ID) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("remover %d: %v", i, err)
		}
	}
	if _, err := s.Status(context.Background(), res.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("image still there: %v", err)
	}
}
