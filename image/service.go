// Package image is cocoond's image service: pulls through containers/image into
// a containers/storage store, and answers list, status, remove and fs-info
// questions about it. It knows nothing about CRI; cri/ maps its types.
package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"

	"github.com/cocoon-runtime/cocoon/config"
)

// Service owns the image store.
type Service struct {
	cfg    config.Image
	store  storage.Store
	driver string
	log    *logrus.Entry

	pulls    pullGroup
	observer PullObserver

	mu      sync.Mutex
	configs map[string]*imageConfig // image ID → parsed config; images are immutable
}

// PullObserver learns about every download (metrics/ implements it): the
// bytes read from the registry, how long it took, and whether it failed.
// Callers that join a running pull share its one observation.
type PullObserver interface {
	ObservePull(bytes uint64, d time.Duration, err error)
}

// Option adjusts a Service.
type Option func(*Service)

// WithPullObserver reports every download to o.
func WithPullObserver(o PullObserver) Option {
	return func(s *Service) { s.observer = o }
}

// New opens (or creates) the store under cfg.GraphRoot. When the overlay
// driver cannot work on this kernel or filesystem it falls back to vfs.
func New(cfg config.Image, log *logrus.Entry, options ...Option) (*Service, error) {
	opts := storage.StoreOptions{
		RunRoot:         cfg.RunRoot,
		GraphRoot:       cfg.GraphRoot,
		GraphDriverName: cfg.Driver,
	}
	store, err := storage.GetStore(opts)
	if err != nil && cfg.Driver == "overlay" {
		log.WithError(err).Warn("overlay storage driver unavailable, falling back to vfs (every layer is a full copy)")
		opts.GraphDriverName = "vfs"
		store, err = storage.GetStore(opts)
	}
	if err != nil {
		return nil, fmt.Errorf("open image store at %s: %w", cfg.GraphRoot, err)
	}
	s := &Service{
		cfg:     cfg,
		store:   store,
		driver:  store.GraphDriverName(),
		log:     log,
		configs: map[string]*imageConfig{},
	}
	s.pulls.m = map[string]*flight{}
	for _, o := range options {
		o(s)
	}
	return s, nil
}

// Store exposes the containers/storage store for container rootfs creation.
func (s *Service) Store() storage.Store { return s.store }

// Driver is the storage driver in use (overlay or vfs).
func (s *Service) Driver() string { return s.driver }

// GraphRoot is where layers live.
func (s *Service) GraphRoot() string { return s.cfg.GraphRoot }

// Close unmounts what the store mounted and releases its locks.
func (s *Service) Close() error {
	_, err := s.store.Shutdown(false)
	return err
}

// systemContext carries registries.conf, auth and TLS settings to containers/image.
func (s *Service) systemContext(auth *Auth) *types.SystemContext {
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    s.cfg.RegistriesConf,
		SystemRegistriesConfDirPath: s.cfg.RegistriesConfDir,
		SignaturePolicyPath:         s.cfg.SignaturePolicy,
		AuthFilePath:                s.cfg.AuthFile,
	}
	if s.cfg.RegistriesConfDir == "" {
		// An empty value would make containers/image read the system drop-in dir.
		sys.SystemRegistriesConfDirPath = os.DevNull
	}
	auth.apply(sys)
	return sys
}

// policyContext loads policy.json on every pull so edits apply without a restart.
// A node without the file accepts every image, as containerd does, and says so.
func (s *Service) policyContext() (*signature.PolicyContext, error) {
	policy, err := signature.NewPolicyFromFile(s.cfg.SignaturePolicy)
	if errors.Is(err, os.ErrNotExist) {
		s.log.WithField("path", s.cfg.SignaturePolicy).Warn("no signature policy file, accepting every image")
		policy = &signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}}
	} else if err != nil {
		return nil, fmt.Errorf("signature policy %s: %w", s.cfg.SignaturePolicy, err)
	}
	return signature.NewPolicyContext(policy)
}

// contextErr prefers the caller's context error (deadline, cancel) over whatever
// the library wrapped around it, so the caller gets the right code.
func contextErr(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%w: %v", ctxErr, err)
	}
	return err
}
