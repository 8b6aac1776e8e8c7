package qemu

import (
	"errors"
	"io/fs"

	"github.com/cocoon-runtime/cocoon/vm"
)

// adoptToken reads the agent token of a VM a previous cocoond started. A VM
// from before agent tokens has no token file, and its agent expects none.
func adoptToken(runDir string) ([]byte, error) {
	tok, err := vm.ReadAgentToken(runDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return tok, err
}
