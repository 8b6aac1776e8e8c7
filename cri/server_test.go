package cri

import (
	"context"
	"errors"
	"fmt"
	"testing"

	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/errdefs"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/sandbox"
)

// fakeImages is a hand-written imageService: one stored image, scripted errors.
type fakeImages struct {
	img      *image.Image
	pullErr  error
	lastAuth *image.Auth
	removed  []string
}

func (f *fakeImages) Pull(_ context.Context, ref string, auth *image.Auth) (image.PullResult, error) {
	f.lastAuth = auth
	if f.pullErr != nil {
		return image.PullResult{}, f.pullErr
	}
	return image.PullResult{ID: f.img.ID}, nil
}

func (f *fakeImages) List(_ context.Context, filter string) ([]*image.Image, error) {
	if filter != "" && filter != f.img.ID {
		return nil, nil
	}
	return []*image.Image{f.img}, nil
}

func (f *fakeImages) Status(_ context.Context, ref string) (*image.Image, error) {
	if ref != f.img.ID {
		return nil, fmt.Errorf("%w: %s", errdefs.ErrNotFound, ref)
	}
	return f.img, nil
}

func (f *fakeImages) Remove(_ context.Context, ref string) error {
	f.removed = append(f.removed, ref)
	return nil
}

func (f *fakeImages) FsInfo(context.Context) (image.FsUsage, error) {
	return image.FsUsage{Mountpoint: "/graph", UsedBytes: 42, InodesUsed: 7}, nil
}

type fakeNetwork struct{ err error }

func (f fakeNetwork) Ready() error { return f.err }

func newTestServer(images *fakeImages, netErr error) *Server {
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	return New(images, fakeNetwork{netErr}, nil, nil, Options{CgroupDriver: "systemd"}, logrus.NewEntry(log))
}

func testImage(user string) *image.Image {
	cfg := &imgspecv1.Image{}
	cfg.Config.User = user
	return &image.Image{ID: "sha256:abc", RepoTags: []string{"x/y:1"}, Size: 10, Config: cfg}
}

func TestImageUser(t *testing.T) {
	t.Parallel()
	tests := []struct {
		user     string
		uid      *int64
		username string
	}{
		{user: ""},
		{user: "1002", uid: ptr(int64(1002))},
		{user: "1003:1004", uid: ptr(int64(1003))},
		{user: "www-data", username: "www-data"},
		{user: "www-data:1004", username: "www-data"},
	}
	for _, tt := range tests {
		got := toCRIImage(testImage(tt.user))
		if (got.Uid == nil) != (tt.uid == nil) || (tt.uid != nil && got.Uid.Value != *tt.uid) || got.Username != tt.username {
			t.Errorf("user %q: uid %v username %q", tt.user, got.Uid, got.Username)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestImageRPCs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := &fakeImages{img: testImage("1000")}
	s := newTestServer(f, nil)

	if _, err := s.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("empty pull: %v", err)
	}
	resp, err := s.PullImage(ctx, &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: "x/y:1"},
		Auth:  &runtimeapi.AuthConfig{Username: "u", Password: "p"},
	})
	if err != nil || resp.ImageRef != "sha256:abc" || f.lastAuth.Username != "u" {
		t.Fatalf("pull: %v %v %+v", resp, err, f.lastAuth)
	}

	st, err := s.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "missing"}})
	if err != nil || st.Image != nil {
		t.Fatalf("missing image must be a nil image without error: %v %v", st, err)
	}
	st, err = s.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "sha256:abc"}, Verbose: true})
	if err != nil || st.Image.Id != "sha256:abc" || st.Image.Uid.GetValue() != 1000 || st.Info["info"] == "" {
		t.Fatalf("status: %v %v", st, err)
	}

	list, err := s.ListImages(ctx, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: "other"}}})
	if err != nil || len(list.Images) != 0 {
		t.Fatalf("filtered list: %v %v", list, err)
	}
	if _, err := s.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "x/y:1"}}); err != nil || f.removed[0] != "x/y:1" {
		t.Fatalf("remove: %v %v", err, f.removed)
	}
	fs, err := s.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil || fs.ImageFilesystems[0].UsedBytes.Value != 42 || fs.ImageFilesystems[0].FsId.Mountpoint != "/graph" {
		t.Fatalf("fsinfo: %v %v", fs, err)
	}
}

func TestStatusConditions(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		netErr  error
		netOK   bool
		message string
	}{
		{name: "network ready", netOK: true},
		{name: "no cni config", netErr: errors.New("no .conflist files in /etc/cni/net.d"), message: "no .conflist files"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(&fakeImages{}, tt.netErr)
			resp, err := s.Status(context.Background(), &runtimeapi.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			conds := map[string]*runtimeapi.RuntimeCondition{}
			for _, c := range resp.Status.Conditions {
				conds[c.Type] = c
			}
			if !conds[runtimeapi.RuntimeReady].Status {
				t.Fatal("runtime not ready")
			}
			net := conds[runtimeapi.NetworkReady]
			if net.Status != tt.netOK || (!tt.netOK && (net.Reason != "NetworkPluginNotReady" || net.Message != tt.netErr.Error())) {
				t.Fatalf("network condition %+v", net)
			}
			// Features kubelet and critest gate specs on.
			if !resp.GetFeatures().GetSupplementalGroupsPolicy() {
				t.Error("SupplementalGroupsPolicy not advertised")
			}
			for _, h := range resp.GetRuntimeHandlers() {
				if !h.GetFeatures().GetRecursiveReadOnlyMounts() {
					t.Errorf("handler %q does not advertise recursive read-only mounts", h.GetName())
				}
			}
		})
	}
}

func TestContainerUser(t *testing.T) {
	t.Parallel()
	if got := containerUser(nil); got != nil {
		t.Errorf("no recorded user: %v, want nil (records from before users were kept)", got)
	}
	got := containerUser(&sandbox.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 1234}})
	want := &runtimeapi.LinuxContainerUser{Uid: 1000, Gid: 1000, SupplementalGroups: []int64{1000, 1234}}
	if !proto.Equal(got.GetLinux(), want) {
		t.Errorf("user = %v, want %v", got.GetLinux(), want)
	}
}

func TestRuntimeConfigAndUpdate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newTestServer(&fakeImages{}, nil)
	rc, err := s.RuntimeConfig(ctx, &runtimeapi.RuntimeConfigRequest{})
	if err != nil || rc.Linux.CgroupDriver != runtimeapi.CgroupDriver_SYSTEMD {
		t.Fatalf("runtime config: %v %v", rc, err)
	}
	update := func(cidr string) error {
		_, err := s.UpdateRuntimeConfig(ctx, &runtimeapi.UpdateRuntimeConfigRequest{
			RuntimeConfig: &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: cidr}},
		})
		return err
	}
	if err := update("10.244.1.0/24,fd00::/64"); err != nil || s.PodCIDR() != "10.244.1.0/24,fd00::/64" {
		t.Fatalf("update: %v, cidr %q", err, s.PodCIDR())
	}
	if err := update("10.244.1.0/33"); !errors.Is(err, errdefs.ErrInvalidArgument) || s.PodCIDR() != "10.244.1.0/24,fd00::/64" {
		t.Fatalf("bad cidr: %v, cidr %q", err, s.PodCIDR())
	}
}

func TestInstrumentMapsErrors(t *testing.T) {
	t.Parallel()
	s := newTestServer(&fakeImages{}, nil)
	info := &grpc.UnaryServerInfo{FullMethod: "/runtime.v1.ImageService/PullImage"}
	for _, tt := range []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("x: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("x: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("x: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("x: %w", errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("x: %w", errdefs.ErrUnauthenticated), codes.Unauthenticated},
		{fmt.Errorf("pull: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("x: %w", errdefs.ErrNotImplemented), codes.Unimplemented},
		// A status someone else chose (a guest agent's) does not choose ours.
		{status.Error(codes.Aborted, "foreign"), codes.Unknown},
		{errors.New("boom"), codes.Unknown},
	} {
		_, err := s.Instrument(context.Background(), &runtimeapi.PullImageRequest{}, info, func(context.Context, any) (any, error) {
			return nil, tt.err
		})
		if got := status.Code(err); got != tt.want {
			t.Errorf("%v: code %v, want %v", tt.err, got, tt.want)
		}
	}
	_, err := s.Instrument(context.Background(), nil, info, func(context.Context, any) (any, error) { panic("bug") })
	if status.Code(err) != codes.Internal {
		t.Fatalf("panic gave %v", err)
	}
}
