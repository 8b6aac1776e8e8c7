package image

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/docker/distribution/registry/api/errcode"
	v2 "github.com/docker/distribution/registry/api/v2"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/image/v5/types"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// PullResult describes a finished pull.
type PullResult struct {
	ID     string // "sha256:<hex>", the image ID
	Bytes  uint64 // bytes read from the registry (0 when every blob was present)
	Took   time.Duration
	Shared bool // this caller joined a pull another caller started
}

// Pull fetches ref into the store and returns the image ID. Concurrent pulls
// of one reference with the same credentials share one download; a caller
// whose context ends stops waiting, and the download stops once nobody waits.
func (s *Service) Pull(ctx context.Context, ref string, auth *Auth) (PullResult, error) {
	named, err := ParseReference(ref)
	if err != nil {
		return PullResult{}, err
	}
	auth, err = auth.normalize()
	if err != nil {
		return PullResult{}, err
	}
	key := named.String() + "\x00" + auth.key()
	return s.pulls.do(ctx, key, func(ctx context.Context) (PullResult, error) {
		return s.pull(ctx, named, auth)
	})
}

// ParseReference normalizes a pull reference the way docker and containerd
// do ("busybox" → "docker.io/library/busybox:latest").
func ParseReference(ref string) (reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: image reference %q: %v", errdefs.ErrInvalidArgument, ref, err)
	}
	return reference.TagNameOnly(named), nil
}

func (s *Service) pull(ctx context.Context, named reference.Named, auth *Auth) (res PullResult, err error) {
	start := time.Now()
	var bytes uint64
	if s.observer != nil {
		defer func() { s.observer.ObservePull(bytes, time.Since(start), err) }()
	}
	log := s.log.WithField("image", named.String())
	srcRef, err := docker.NewReference(named)
	if err != nil {
		return PullResult{}, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	destRef, err := istorage.Transport.NewStoreReference(s.store, named, "")
	if err != nil {
		return PullResult{}, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	policy, err := s.policyContext()
	if err != nil {
		return PullResult{}, err
	}
	defer policy.Destroy() //nolint:errcheck // nothing to do about a failed release

	// registries.conf (and its drop-ins) apply to the next pull without a
	// restart, as policy.json does: containers/image would otherwise keep the
	// first parse for the life of the process.
	sysregistriesv2.InvalidateCache()
	sys := s.systemContext(auth)
	progress := make(chan types.ProgressProperties)
	var logged sync.WaitGroup
	logged.Add(1)
	go func() {
		defer logged.Done()
		bytes = logProgress(log, progress)
	}()
	log.Info("pulling image")
	_, err = copy.Image(ctx, policy, destRef, srcRef, &copy.Options{
		SourceCtx:            sys,
		DestinationCtx:       sys,
		ReportWriter:         io.Discard,
		Progress:             progress,
		ProgressInterval:     s.cfg.PullProgressInterval.Std(),
		MaxParallelDownloads: s.cfg.MaxParallelDownloads,
	})
	close(progress)
	logged.Wait()
	if err != nil {
		err = classifyPullError(ctx, named, err)
		log.WithError(err).WithField("took", time.Since(start).String()).Warn("pull failed")
		return PullResult{}, err
	}
	// The reference names what was just copied (destRef carries our store).
	_, img, err := istorage.ResolveReference(destRef)
	if err != nil {
		return PullResult{}, fmt.Errorf("pulled image not found in store: %w", err)
	}
	res = PullResult{ID: "sha256:" + img.ID, Bytes: bytes, Took: time.Since(start)}
	log.WithFields(logrus.Fields{"id": res.ID, "bytes": res.Bytes, "took": res.Took.String()}).Info("pulled image")
	return res, nil
}

// logProgress logs each blob as it starts and, at the configured interval,
// how far it got; it returns the bytes read in total.
func logProgress(log *logrus.Entry, progress <-chan types.ProgressProperties) uint64 {
	var total uint64
	for p := range progress {
		fields := logrus.Fields{"blob": p.Artifact.Digest.String(), "size": p.Artifact.Size}
		switch p.Event {
		case types.ProgressEventNewArtifact:
			log.WithFields(fields).Debug("pull: fetching blob")
		case types.ProgressEventRead:
			total += p.OffsetUpdate
			log.WithFields(fields).WithField("offset", p.Offset).Info("pull progress")
		case types.ProgressEventDone:
			total += p.OffsetUpdate
			log.WithFields(fields).Debug("pull: blob done")
		case types.ProgressEventSkipped:
			log.WithFields(fields).Debug("pull: blob already present")
		}
	}
	return total
}

// classifyPullError wraps the library's error in the sentinel cri/ maps to a code.
func classifyPullError(ctx context.Context, named reference.Named, err error) error {
	if ctx.Err() != nil {
		return contextErr(ctx, err)
	}
	var coder errcode.ErrorCoder
	if errors.As(err, &coder) {
		switch coder.ErrorCode() {
		case v2.ErrorCodeManifestUnknown, v2.ErrorCodeNameUnknown:
			return fmt.Errorf("%w: image %s: %v", errdefs.ErrNotFound, named, err)
		case errcode.ErrorCodeUnauthorized, errcode.ErrorCodeDenied:
			return fmt.Errorf("%w: image %s: %v", errdefs.ErrUnauthenticated, named, err)
		}
	}
	var unauthorized docker.ErrUnauthorizedForCredentials
	if errors.As(err, &unauthorized) {
		return fmt.Errorf("%w: image %s: %v", errdefs.ErrUnauthenticated, named, err)
	}
	return fmt.Errorf("pull %s: %w", named, err)
}

func hashString(s string) [sha256.Size]byte { return sha256.Sum256([]byte(s)) }

// flight is one download that several callers may wait on.
type flight struct {
	done    chan struct{}
	res     PullResult
	err     error
	waiters int
	cancel  context.CancelFunc
}

// pullGroup de-duplicates concurrent pulls by key.
type pullGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

func (g *pullGroup) do(ctx context.Context, key string, fn func(context.Context) (PullResult, error)) (PullResult, error) {
	g.mu.Lock()
	f, shared := g.m[key]
	if !shared {
		// The download outlives any single caller (values are kept for logging).
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		g.m[key] = f
		go func() {
			f.res, f.err = fn(fctx)
			g.mu.Lock()
			if g.m[key] == f {
				delete(g.m, key)
			}
			g.mu.Unlock()
			cancel()
			close(f.done)
		}()
	}
	f.waiters++
	g.mu.Unlock()

	select {
	case <-f.done:
		res := f.res
		res.Shared = shared
		return res, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if g.m[key] == f {
				delete(g.m, key)
			}
		}
		g.mu.Unlock()
		return PullResult{}, ctx.Err()
	}
}
