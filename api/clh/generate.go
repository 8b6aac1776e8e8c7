// Package clh is a client for the part of Cloud Hypervisor's REST API that
// vm/clh uses. cloud-hypervisor.yaml is our own OpenAPI subset, pinned to one
// Cloud Hypervisor release; client.gen.go is generated from it by the
// oapi-codegen version pinned as a tool in go.mod and is committed, so
// `go generate ./api/...` must reproduce it byte for byte.
package clh

//go:generate go tool oapi-codegen -config oapi-codegen.yaml cloud-hypervisor.yaml
