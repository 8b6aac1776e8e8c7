// Command gendoc writes the configuration reference (docs/CONFIG.md) from the
// config structs and the embedded defaults: go generate ./config.
package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/cocoon-runtime/cocoon/config"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gendoc OUTPUT.md")
		os.Exit(2)
	}
	var buf bytes.Buffer
	if err := config.Reference(&buf); err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(os.Args[1], buf.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
}
