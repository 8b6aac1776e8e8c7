package cri

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// execPods answers ExecSync with fixed output.
type execPods struct {
	podManager
	stdout, stderr int
}

func (f execPods) ExecSync(context.Context, string, []string, time.Duration) (*sandbox.ExecResult, error) {
	return &sandbox.ExecResult{Stdout: bytes.Repeat([]byte("o"), f.stdout), Stderr: bytes.Repeat([]byte("e"), f.stderr), ExitCode: 1}, nil
}

// TestExecSyncReplyFits: whatever the sandbox kept (up to 16 MiB per
// stream), the reply fits kubelet's and cocoond's 16 MiB message limit.
func TestExecSyncReplyFits(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	for _, tt := range []struct {
		name                   string
		stdout, stderr         int
		wantStdout, wantStderr int
	}{
		{"small", 10, 5, 10, 5},
		{"full stdout", 16 * mib, 0, maxExecSyncReply, 0},
		{"both full", 16 * mib, 16 * mib, maxExecSyncReply - maxExecSyncReply/2, maxExecSyncReply / 2},
		{"small stderr", 16 * mib, 100, maxExecSyncReply - 100, 100},
		{"full stderr", 100, 16 * mib, 100, maxExecSyncReply - 100},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log := logrus.New()
			log.SetLevel(logrus.PanicLevel)
			s := New(&fakeImages{}, fakeNetwork{}, execPods{stdout: tt.stdout, stderr: tt.stderr}, nil, Options{}, logrus.NewEntry(log))
			resp, err := s.ExecSync(context.Background(), &runtimeapi.ExecSyncRequest{ContainerId: "c", Cmd: []string{"probe"}})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Stdout) != tt.wantStdout || len(resp.Stderr) != tt.wantStderr {
				t.Fatalf("kept %d + %d bytes, want %d + %d", len(resp.Stdout), len(resp.Stderr), tt.wantStdout, tt.wantStderr)
			}
			if size := proto.Size(resp); size > 16*mib {
				t.Fatalf("reply of %d bytes is over the 16 MiB message limit", size)
			}
		})
	}
}
