// Package agent is the wire contract between cocoond and cocoon-agent: the
// protobuf messages and the ttRPC client and server stubs generated from
// agent.proto. The generated files are committed; `make generate` rebuilds them
// byte for byte with Debian's protoc and the plugin versions pinned in go.mod.
package agent

//go:generate sh -c "go build -o ../../bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go && go build -o ../../bin/protoc-gen-go-ttrpc github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc"
//go:generate protoc -I . -I /usr/include --plugin=protoc-gen-go=../../bin/protoc-gen-go --plugin=protoc-gen-go-ttrpc=../../bin/protoc-gen-go-ttrpc --go_out=. --go_opt=paths=source_relative --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative agent.proto
