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

// maxAttachQueue bounds the output queued for one attached client: a client
// that reads slower than the guest writes loses output past it, rather than
// cocoond holding the guest's output for it (a chunk from the agent may be up
// to ttRPC's 4 MiB message limit, so a count of chunks alone bounds nothing).
const maxAttachQueue = 1 << 20

// output copies a container's stdout and stderr from the agent into its CRI
// log file, and fans them out to attached clients.
type output struct {
	path string
	mu   sync.Mutex
	file *os.File
	subs map[*subscription]struct{} // attached readers
	done sync.WaitGroup

	// ctx ends the output streams when the output is closed (container
	// removed, pod stopped), whatever context the caller read them on.
	ctx    context.Context
	cancel context.CancelFunc
}

func newOutput(path string) (*output, error) {
	o := &output{path: path, subs: map[*subscription]struct{}{}}
	o.ctx, o.cancel = context.WithCancel(context.Background())
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

// copyStreams starts copying a container's output into o: stdout, and
// stderr unless the container has a terminal (whose one stream is stdout).
// Container creation and re-adoption after a restart both start it here.
func (o *output) copyStreams(ctx context.Context, a agentapi.AgentClient, containerID string, tty bool, log *logrus.Entry) error {
	streams := []agentapi.ReadOutputRequest_Stream{agentapi.ReadOutputRequest_STDOUT}
	if !tty {
		streams = append(streams, agentapi.ReadOutputRequest_STDERR)
	}
	for _, s := range streams {
		if err := o.copyStream(ctx, a, containerID, s, log); err != nil {
			return err
		}
	}
	return nil
}

// copyStream reads one stream from the agent until EOF, ctx ends or the
// output is closed.
func (o *output) copyStream(ctx context.Context, a agentapi.AgentClient, containerID string, which agentapi.ReadOutputRequest_Stream, log *logrus.Entry) error {
	ctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(o.ctx, cancel)
	open := func() (agentapi.Agent_ReadOutputClient, error) {
		return a.ReadOutput(ctx, &agentapi.ReadOutputRequest{ContainerId: containerID, Stream: which})
	}
	stream, err := open()
	if err != nil {
		stopOnClose()
		cancel()
		return err
	}
	name := "stdout"
	if which == agentapi.ReadOutputRequest_STDERR {
		name = "stderr"
	}
	o.done.Add(1)
	go func() {
		defer o.done.Done()
		defer cancel()
		defer stopOnClose()
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

// subscription is one attached client's share of a stream's output.
type subscription struct {
	o      *output
	stream string // "stdout" or "stderr"
	ch     chan []byte
	queued int // bytes in ch, under o.mu
	lost   int // bytes dropped because the client lagged, under o.mu
}

func (o *output) fanOut(stream string, data []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for s := range o.subs {
		if s.stream != stream {
			continue
		}
		// A slow attached client loses output rather than stalling the log or
		// making cocoond hold the guest's output for it.
		if s.queued+len(data) > maxAttachQueue {
			s.lost += len(data)
			continue
		}
		select {
		case s.ch <- append([]byte(nil), data...):
			s.queued += len(data)
		default:
			s.lost += len(data)
		}
	}
}

// subscribe returns stream's output ("stdout" or "stderr") from now on.
func (o *output) subscribe(stream string) *subscription {
	s := &subscription{o: o, stream: stream, ch: make(chan []byte, 256)}
	o.mu.Lock()
	o.subs[s] = struct{}{}
	o.mu.Unlock()
	return s
}

// next returns the next chunk of output; false once cancelled.
func (s *subscription) next() ([]byte, bool) {
	data, ok := <-s.ch
	if ok {
		s.o.mu.Lock()
		s.queued -= len(data)
		s.o.mu.Unlock()
	}
	return data, ok
}

// cancel ends the subscription.
func (s *subscription) cancel() {
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	if _, ok := s.o.subs[s]; ok {
		delete(s.o.subs, s)
		close(s.ch)
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
	o.cancel()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file != nil {
		o.file.Close()
		o.file = nil
	}
}

// closeOutputs closes every container's output and ends the pod runtime's
// lifetime context (the pod stops): every stream and long poll on its agent
// ends with it.
func (rt *podRuntime) closeOutputs() {
	rt.end()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for id, o := range rt.outputs {
		o.close()
		delete(rt.outputs, id)
	}
}
