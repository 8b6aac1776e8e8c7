package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxExecSyncReply bounds ExecSync's stdout and stderr together so the reply
// fits the 16 MiB gRPC message limit of cocoond's server and of kubelet's
// client (the sandbox caps each stream at 16 MiB; both full would not fit),
// with room for the rest of the message.
const maxExecSyncReply = 16<<20 - 64<<10

// ExecSync runs a command in a container and returns its output and exit code.
func (s *Server) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	if req.GetContainerId() == "" || len(req.GetCmd()) == 0 {
		return nil, invalid("container id and command are required")
	}
	res, err := s.pods.ExecSync(ctx, req.GetContainerId(), req.GetCmd(), time.Duration(req.GetTimeout())*time.Second)
	if err != nil {
		return nil, err
	}
	stdout, stderr := fitReply(res.Stdout, res.Stderr, maxExecSyncReply)
	if len(stdout) < len(res.Stdout) || len(stderr) < len(res.Stderr) {
		s.log.WithField("container", req.GetContainerId()).Warnf("exec output of %d + %d bytes trimmed to %d + %d to fit the reply",
			len(res.Stdout), len(res.Stderr), len(stdout), len(stderr))
	}
	return &runtimeapi.ExecSyncResponse{Stdout: stdout, Stderr: stderr, ExitCode: res.ExitCode}, nil
}

// fitReply keeps the start of stdout and stderr within max bytes together;
// each stream keeps at least half of max when it has that much.
func fitReply(stdout, stderr []byte, max int) ([]byte, []byte) {
	if len(stdout)+len(stderr) <= max {
		return stdout, stderr
	}
	errKeep := min(len(stderr), max/2)
	outKeep := min(len(stdout), max-errKeep)
	errKeep = min(len(stderr), max-outKeep)
	return stdout[:outKeep], stderr[:errKeep]
}
