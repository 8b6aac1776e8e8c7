// Package errdefs holds the sentinel errors internal packages wrap with %w.
// They are containerd's (github.com/containerd/errdefs), so errors from
// libraries that speak containerd's classes (and errgrpc's mapping) agree
// with ours; the names here keep the ~50 importers unchanged. Only
// cri/instrument.go turns them into gRPC codes, so the mapping lives in one
// place.
package errdefs

import cerrdefs "github.com/containerd/errdefs"

var (
	ErrNotFound           = cerrdefs.ErrNotFound
	ErrInvalidArgument    = cerrdefs.ErrInvalidArgument
	ErrAlreadyExists      = cerrdefs.ErrAlreadyExists
	ErrFailedPrecondition = cerrdefs.ErrFailedPrecondition
	ErrUnavailable        = cerrdefs.ErrUnavailable
	ErrUnauthenticated    = cerrdefs.ErrUnauthenticated
	ErrNotImplemented     = cerrdefs.ErrNotImplemented
)
