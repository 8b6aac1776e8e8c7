// Package version carries the build's version, set by the Makefile through -ldflags.
package version

var (
	// Version is the cocoon release, e.g. "v0.1.0" or a git describe string.
	Version = "v0.1.0-dev"
	// Revision is the git commit the binaries were built from.
	Revision = "unknown"
)

const (
	// RuntimeName is what Version reports to kubelet.
	RuntimeName = "cocoon"
	// CRIAPIVersion is the CRI API version cocoond serves.
	CRIAPIVersion = "v1"
)
