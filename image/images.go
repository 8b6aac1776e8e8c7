package image

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/storage"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// Image is what the service knows of one stored image.
type Image struct {
	ID          string // "sha256:<hex>"
	RepoTags    []string
	RepoDigests []string
	Size        uint64
	Created     time.Time
	Config      *imgspecv1.Image // the OCI image config (user, env, entrypoint, labels)
}

type imageConfig = imgspecv1.Image

// User returns the uid or the username the image runs as; the group part is dropped
// because CRI reports only the user.
func (i *Image) User() (uid int64, hasUID bool, username string) {
	if i.Config == nil || i.Config.Config.User == "" {
		return 0, false, ""
	}
	user, _, _ := strings.Cut(i.Config.Config.User, ":")
	if n, err := strconv.ParseInt(user, 10, 64); err == nil {
		return n, true, ""
	}
	return 0, false, user
}

// List returns every image, or only the one filter names when filter is set.
func (s *Service) List(ctx context.Context, filter string) ([]*Image, error) {
	if filter != "" {
		img, err := s.Status(ctx, filter)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return []*Image{img}, nil
	}
	stored, err := s.store.Images()
	if err != nil {
		return nil, err
	}
	out := make([]*Image, 0, len(stored))
	for i := range stored {
		img, err := s.describe(ctx, &stored[i])
		if errors.Is(err, storage.ErrImageUnknown) {
			continue // removed while we listed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// Status describes the image ref names, or returns an ErrNotFound error.
func (s *Service) Status(ctx context.Context, ref string) (*Image, error) {
	stored, err := s.lookup(ref)
	if err != nil {
		return nil, err
	}
	img, err := s.describe(ctx, stored)
	if errors.Is(err, storage.ErrImageUnknown) {
		return nil, fmt.Errorf("%w: image %q", errdefs.ErrNotFound, ref)
	}
	return img, err
}

func (s *Service) describe(ctx context.Context, stored *storage.Image) (*Image, error) {
	size, err := s.store.ImageSize(stored.ID)
	if err != nil {
		return nil, fmt.Errorf("size of image %s: %w", stored.ID, err)
	}
	cfg, err := s.config(ctx, stored.ID)
	if err != nil {
		return nil, err
	}
	tags, digests := repoTagsAndDigests(stored)
	img := &Image{
		ID:          "sha256:" + stored.ID,
		RepoTags:    tags,
		RepoDigests: digests,
		Size:        uint64(size),
		Created:     stored.Created,
		Config:      cfg,
	}
	if cfg.Created != nil {
		img.Created = *cfg.Created
	}
	return img, nil
}

// config reads an image's OCI config once; images never change, so it is cached.
func (s *Service) config(ctx context.Context, id string) (*imgspecv1.Image, error) {
	s.mu.Lock()
	cfg, ok := s.configs[id]
	s.mu.Unlock()
	if ok {
		return cfg, nil
	}
	ref, err := istorage.Transport.NewStoreReference(s.store, nil, id)
	if err != nil {
		return nil, err
	}
	src, err := ref.NewImage(ctx, s.systemContext(nil))
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", id, err)
	}
	defer src.Close()
	cfg, err = src.OCIConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("config of image %s: %w", id, err)
	}
	s.mu.Lock()
	s.configs[id] = cfg
	s.mu.Unlock()
	return cfg, nil
}

// Remove deletes the image ref names with every one of its tags. Removing an
// image that is not there succeeds: kubelet retries removals.
func (s *Service) Remove(ctx context.Context, ref string) error {
	img, err := s.lookup(ref)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = s.store.DeleteImage(img.ID, true)
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrImageUsedByContainer):
		return fmt.Errorf("%w: image %s: %v", errdefs.ErrFailedPrecondition, ref, err)
	case !s.store.Exists(img.ID):
		// A concurrent removal won the race (storage then reports "unknown" or
		// "not an image"): the caller's wish is fulfilled.
		return nil
	default:
		return fmt.Errorf("remove image %s: %w", ref, err)
	}
	s.mu.Lock()
	delete(s.configs, img.ID)
	s.mu.Unlock()
	s.log.WithField("image", ref).WithField("id", "sha256:"+img.ID).Info("removed image")
	return nil
}
