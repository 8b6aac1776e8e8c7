// Package errdefs holds the sentinel errors internal packages wrap with %w.
// Only cri/instrument.go turns them into gRPC codes, so the mapping lives in one place.
package errdefs

import "errors"

var (
	ErrNotFound           = errors.New("not found")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnavailable        = errors.New("unavailable")
	ErrUnauthenticated    = errors.New("unauthenticated")
)
