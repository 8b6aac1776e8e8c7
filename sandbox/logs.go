package sandbox

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// maxLogLine is the longest line written as one record; longer lines are
// split into partial (P) records, as kubelet expects.
const maxLogLine = 16 << 10

// output copies a container's stdout and stderr from the agent into its CRI
// log file, and fans them out to attached clients.
type output struct {
	path string
	mu   sync.Mutex
	file *os.File
	subs map[chan []byte]string // attached readers → stream they want ("" both)
	done sync.WaitGroup
}

func newOutput(path string) (*output, error) {
	o := &output{path: path, subs: map[chan []byte]string{}}
	if path != "" {
		if err := o.reopen(); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// reopen closes the log file and opens it again at its path (log rotation).
func (o *output) reopen() error {
	if err := os.MkdirAll(filepath.Dir(o.path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(o.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	o.mu.Lock()
	old := o.file
	o.file = f
	o.mu.Unlock()
	if old != nil {
		return old.Close()
	}
	return nil
}

// copyStream reads one stream from the agent until EOF.
func (o *output) copyStream(ctx context.Context, a agentapi.AgentClient, containerID string, which agentapi.ReadOutputRequest_Stream, log *logrus.Entry) error {
	open := func() (agentapi.Agent_ReadOutputClient, error) {
		return a.ReadOutput(ctx, &agentapi.ReadOutputRequest{ContainerId: containerID, Stream: which})
	}
	stream, err := open()
	if err != nil {
		return err
	}
	name := "stdout"
	if which == agentapi.ReadOutputRequest_STDERR {
		name = "stderr"
	}
	o.done.Add(1)
	go func() {
		defer o.done.Done()
		var pending []byte
		// After a cocoond restart the agent may still hold the stream for the
		// reader of the dead connection for up to half a second: retry then.
		retryUntil := time.Now().Add(10 * time.Second)
		for {
			chunk, err := stream.Recv()
			if status.Code(err) == codes.FailedPrecondition && time.Now().Before(retryUntil) {
				time.Sleep(100 * time.Millisecond)
				if next, oerr := open(); oerr == nil {
					stream = next
					continue
				}
			}
			if err != nil {
				if len(pending) > 0 {
					o.writeRecord(name, "F", pending)
				}
				if !errors.Is(err, io.EOF) && ctx.Err() == nil {
					log.WithError(err).WithField("stream", name).Debug("output stream ended")
				}
				return
			}
			o.fanOut(name, chunk.Data)
			pending = append(pending, chunk.Data...)
			for {
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				// A line that arrived with its newline can still be longer
				// than maxLogLine: its head goes out as partial records too.
				line := pending[:i]
				for len(line) > maxLogLine {
					o.writeRecord(name, "P", line[:maxLogLine])
					line = line[maxLogLine:]
				}
				o.writeRecord(name, "F", line)
				pending = pending[i+1:]
			}
			for len(pending) >= maxLogLine {
				o.writeRecord(name, "P", pending[:maxLogLine])
				pending = pending[maxLogLine:]
			}
			pending = append([]byte(nil), pending...)
		}
	}()
	return nil
}

// writeRecord appends "<RFC3339Nano> <stream> <P|F> <text>\n".
func (o *output) writeRecord(stream, tag string, text []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file == nil {
		return
	}
	line := make([]byte, 0, len(text)+64)
	line = time.Now().UTC().AppendFormat(line, time.RFC3339Nano)
	line = append(line, ' ')
	line = append(line, stream...)
	line = append(line, ' ')
	line = append(line, tag...)
	line = append(line, ' ')
	line = append(line, text...)
	line = append(line, '\n')
	_, _ = o.file.Write(line)
}

func (o *output) fanOut(stream string, data []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for ch, want := range o.subs {
		if want != "" && want != stream {
			continue
		}
		select {
		case ch <- append([]byte(nil), data...):
		default: // a slow attached client loses output rather than stalling the log
		}
	}
}

// subscribe returns a channel of stream's output ("stdout" or "stderr") from
// now on, and the function that ends the subscription.
func (o *output) subscribe(stream string) (chan []byte, func()) {
	ch := make(chan []byte, 256)
	o.mu.Lock()
	o.subs[ch] = stream
	o.mu.Unlock()
	return ch, func() {
		o.mu.Lock()
		if _, ok := o.subs[ch]; ok {
			delete(o.subs, ch)
			close(ch)
		}
		o.mu.Unlock()
	}
}

// finished is closed once every stream reached EOF (the container exited).
func (o *output) finished() <-chan struct{} {
	done := make(chan struct{})
	go func() { o.done.Wait(); close(done) }()
	return done
}

// wait blocks until both streams reached EOF, or the timeout.
func (o *output) wait(timeout time.Duration) {
	done := make(chan struct{})
	go func() { o.done.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

func (o *output) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file != nil {
		o.file.Close()
		o.file = nil
	}
}

func (rt *podRuntime) closeOutputs() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for id, o := range rt.outputs {
		o.close()
		delete(rt.outputs, id)
	}
}
