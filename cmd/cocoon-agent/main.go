// Command cocoon-agent is PID 1 of every Cocoon pod VM (see package agent),
// and, as "cocoon-agent host", the sandbox process of a host pod on the host.
// It is a static binary; libcontainer's nsenter (cgo) runs before Go starts
// whenever it is re-executed as "init" to become a container process.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/agent"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/version"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init() // becomes the container process; never returns
	}
}

func main() {
	switch {
	// The pod's pause process is PID 1 of its own PID namespace too: it must
	// not be mistaken for the guest's init (which mounts over /run).
	case len(os.Args) > 1 && os.Args[1] == "pause":
		agent.RunPause()
	// A host pod's sandbox process, on the host (see agent/hostmode.go).
	case len(os.Args) > 1 && os.Args[1] == agentapi.HostModeArg:
		opts, err := agent.ParseHostArgs(os.Args[2:])
		if err != nil {
			fmt.Fprintln(os.Stderr, "cocoon-agent host:", err)
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
		defer stop()
		if err := agent.ServeHost(ctx, opts); err != nil {
			logrus.WithError(err).Error("host-mode agent failed")
			os.Exit(1)
		}
	case os.Getpid() == 1:
		agent.RunPID1()
	case len(os.Args) > 1 && os.Args[1] == "serve":
		ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
		defer stop()
		if err := agent.Serve(ctx); err != nil {
			logrus.WithError(err).Error("agent server failed")
			os.Exit(1)
		}
	case len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "version"):
		fmt.Printf("cocoon-agent %s (revision %s)\n", version.Version, version.Revision)
	default:
		fmt.Fprintln(os.Stderr, "cocoon-agent runs as PID 1 of a Cocoon VM; see `cocoon guest build`")
		os.Exit(2)
	}
}
