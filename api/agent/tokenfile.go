package agent

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrMalformedToken says a token file does not hold exactly TokenSize bytes.
var ErrMalformedToken = errors.New("malformed agent token")

// ReadTokenFile reads a per-pod token file: exactly TokenSize bytes, not
// through a symlink. cocoond reads it when it adopts a VM; a host-mode agent
// reads it at start. Both refuse a short or long file.
func ReadTokenFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("agent token: %w", err)
	}
	defer f.Close()
	tok := make([]byte, TokenSize+1)
	n, _ := f.Read(tok)
	if n != TokenSize {
		return nil, fmt.Errorf("%w: %s has %d bytes, want %d", ErrMalformedToken, path, n, TokenSize)
	}
	return tok[:n], nil
}
