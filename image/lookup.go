package image

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/storage"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{3,64}$`)

// lookup finds the stored image a CRI image string names: an ID ("sha256:<hex>",
// the full hex or a unique prefix of it), a tag, or a repository digest.
func (s *Service) lookup(ref string) (*storage.Image, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return nil, fmt.Errorf("%w: empty image reference", errdefs.ErrInvalidArgument)
	}
	if id, ok := strings.CutPrefix(ref, "sha256:"); ok {
		if !hexID.MatchString(id) {
			return nil, fmt.Errorf("%w: malformed image ID %q", errdefs.ErrInvalidArgument, ref)
		}
		return s.imageByID(id)
	}
	if hexID.MatchString(ref) {
		// A short ID also parses as a repository name: try the ID first, as crictl users expect.
		img, err := s.imageByID(ref)
		if err == nil || len(ref) == 64 {
			return img, err // a full ID can only be an ID (names may not be 64 hex characters)
		}
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: image reference %q: %v", errdefs.ErrInvalidArgument, ref, err)
	}
	if canonical, ok := named.(reference.Canonical); ok {
		return s.imageByDigest(canonical)
	}
	name := reference.TagNameOnly(named).String()
	img, err := s.store.Image(name)
	if err != nil || !slices.Contains(img.Names, name) {
		// store.Image also matches ID prefixes; only an exact name counts here.
		return nil, fmt.Errorf("%w: image %q", errdefs.ErrNotFound, ref)
	}
	return img, nil
}

func (s *Service) imageByID(id string) (*storage.Image, error) {
	img, err := s.store.Image(id)
	if errors.Is(err, storage.ErrImageUnknown) || (err == nil && !strings.HasPrefix(img.ID, id)) {
		return nil, fmt.Errorf("%w: image ID %q", errdefs.ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return img, nil
}

// imageByDigest finds the image of repo@digest: one whose names include the
// repository and whose manifest digests include the digest.
func (s *Service) imageByDigest(ref reference.Canonical) (*storage.Image, error) {
	images, err := s.store.Images()
	if err != nil {
		return nil, err
	}
	repo := ref.Name()
	for i := range images {
		img := &images[i]
		if !slices.Contains(manifestDigests(img), ref.Digest()) {
			continue
		}
		for _, n := range img.Names {
			if named, err := reference.ParseNormalizedNamed(n); err == nil && named.Name() == repo {
				return img, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: image %q", errdefs.ErrNotFound, ref.String())
}

func manifestDigests(img *storage.Image) []digest.Digest {
	if len(img.Digests) > 0 {
		return img.Digests
	}
	if img.Digest != "" {
		return []digest.Digest{img.Digest}
	}
	return nil
}

// repoTagsAndDigests splits stored names into CRI repo tags ("repo:tag") and
// repo digests ("repo@sha256:…", one per repository and manifest digest).
func repoTagsAndDigests(img *storage.Image) (tags, digests []string) {
	var repos []string
	for _, n := range img.Names {
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			continue
		}
		if tagged, ok := named.(reference.NamedTagged); ok {
			if _, isDigested := named.(reference.Canonical); !isDigested {
				tags = append(tags, tagged.String())
			}
		}
		if !slices.Contains(repos, named.Name()) {
			repos = append(repos, named.Name())
		}
	}
	for _, repo := range repos {
		for _, d := range manifestDigests(img) {
			digests = append(digests, repo+"@"+d.String())
		}
	}
	return tags, digests
}
