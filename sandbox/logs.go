package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
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
	// written is, per stream (stdout, stderr), the absolute offset of the
	// first byte not yet in a log record: what a new reader resumes from.
	written [2]uint64
	mark    LogMark // places the current file in the streams
	// persist saves mark in the container's record (rotation, lost bytes);
	// nil saves nothing.
	persist func(LogMark) error
	done    sync.WaitGroup

	// ctx ends the output streams when the output is closed (container
	// removed, pod stopped), whatever context the caller read them on.
	ctx    context.Context
	cancel context.CancelFunc
}

// newOutput opens a new container's log at path ("" for none); its
// records start at the file's current end.
func newOutput(path string) (*output, error) {
	o := &output{path: path, subs: map[*subscription]struct{}{}}
	o.ctx, o.cancel = context.WithCancel(context.Background())
	if path != "" {
		f, size, err := openLog(path)
		if err != nil {
			return nil, err
		}
		o.file, o.mark.Start = f, size
	}
	return o, nil
}

// openLog opens (creating) a log file for appending, and for recovery to
// count, and says how long it is. It must be a regular file: a FIFO or a
// device there would block or misread, and its last element is not followed.
func openLog(path string) (*os.File, int64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("log %s is not a regular file (%s)", path, st.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// reopen closes the log file and opens it again at its path (log rotation).
// What the old file holds joins the base first, saved before any record
// goes to the new file: a crash on either side of it counts every byte once.
func (o *output) reopen() error {
	f, size, err := openLog(o.path)
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	next := LogMark{Start: size, Base: o.written}
	if o.persist != nil {
		if err := o.persist(next); err != nil {
			f.Close()
			return err
		}
	}
	old := o.file
	o.file, o.mark = f, next
	if old != nil {
		return old.Close()
	}
	return nil
}

// logMark is where the current log file sits in the streams.
func (o *output) logMark() LogMark {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.mark
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

// maxStreamOffset bounds the offsets cocoond accepts from an agent, far
// beyond any real stream, so that no sum of them overflows.
const maxStreamOffset = 1 << 62

// errStreamOffset is a chunk whose offset does not follow what came before:
// a lying or broken agent.
var errStreamOffset = errors.New("output chunk out of place")

// copyStream reads one stream from the agent, from the first byte the log
// does not hold yet, until EOF, ctx ends or the output is closed.
func (o *output) copyStream(ctx context.Context, a agentapi.AgentClient, containerID string, which agentapi.ReadOutputRequest_Stream, log *logrus.Entry) error {
	ctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(o.ctx, cancel)
	name, idx := "stdout", 0
	if which == agentapi.ReadOutputRequest_STDERR {
		name, idx = "stderr", 1
	}
	log = log.WithField("stream", name)
	// open asks from the first byte not in a record: a partial line held
	// in pending is asked again.
	open := func() (agentapi.Agent_ReadOutputClient, uint64, error) {
		o.mu.Lock()
		from := o.written[idx]
		o.mu.Unlock()
		s, err := a.ReadOutput(ctx, &agentapi.ReadOutputRequest{ContainerId: containerID, Stream: which, Offset: from})
		return s, from, err
	}
	stream, from, err := open()
	if err != nil {
		stopOnClose()
		cancel()
		return err
	}
	o.done.Add(1)
	go func() {
		defer o.done.Done()
		defer cancel()
		defer stopOnClose()
		var pending []byte
		pos := streamPos{next: from, first: true}
		// After a cocoond restart the agent may still hold the stream for the
		// reader of the dead connection for up to half a second: retry then.
		retryUntil := time.Now().Add(10 * time.Second)
		for {
			chunk, err := stream.Recv()
			if status.Code(err) == codes.FailedPrecondition && time.Now().Before(retryUntil) {
				time.Sleep(100 * time.Millisecond)
				if s, from, oerr := open(); oerr == nil {
					stream, pending = s, nil
					pos.next, pos.first = from, true
					continue
				}
			}
			if err == nil {
				err = o.place(idx, chunk, &pos, log)
			}
			if err != nil {
				// A line cut by EOF is complete; one cut by anything else
				// (cocoond going away, a lost connection) goes out partial,
				// as it stands in the stream: its rest may come later.
				if len(pending) > 0 {
					tag := "P"
					if errors.Is(err, io.EOF) {
						tag = "F"
					}
					o.writeRecord(idx, tag, pending)
				}
				switch {
				case errors.Is(err, errStreamOffset):
					log.WithError(err).Warn("output stream refused")
				case status.Code(err) == codes.OutOfRange:
					// The agent has sent less than the log holds: the last
					// line was completed at EOF (see above), nothing is missing.
					log.WithError(err).Info("output stream has nothing to resume")
				case !errors.Is(err, io.EOF) && ctx.Err() == nil:
					log.WithError(err).Debug("output stream ended")
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
					o.writeRecord(idx, "P", line[:maxLogLine])
					line = line[maxLogLine:]
				}
				o.writeRecord(idx, "F", line)
				pending = pending[i+1:]
			}
			for len(pending) >= maxLogLine {
				o.writeRecord(idx, "P", pending[:maxLogLine])
				pending = pending[maxLogLine:]
			}
			pending = append([]byte(nil), pending...)
		}
	}()
	return nil
}

// streamPos is where a stream stands, as copyStream reads it.
type streamPos struct {
	next   uint64 // offset the next chunk must start at
	first  bool   // no chunk yet since the stream was opened
	offset bool   // a chunk carried an offset other than 0
	legacy bool   // the agent predates offsets: every chunk says 0
}

// place checks that chunk continues the stream at pos, and moves pos past
// it. The agent is not trusted: the first chunk after an open may start
// later than asked (the bytes between left its window: they are counted as
// lost, in the base, so the file never has to hold them), every other chunk
// must start exactly where the last ended, and no offset may run past
// maxStreamOffset. An agent older than offsets sends 0 for every chunk: its
// chunks are taken as they come, as before offsets (a guest gains nothing
// by posing as one: no check protects more than its own log's order).
func (o *output) place(idx int, chunk *agentapi.OutputChunk, pos *streamPos, log *logrus.Entry) error {
	at, n := chunk.GetOffset(), uint64(len(chunk.GetData()))
	first := pos.first
	pos.first = false
	if at == 0 && pos.next > 0 && !pos.offset && !pos.legacy {
		log.Info("the agent predates output offsets: a cocoond crash may lose output in flight")
		pos.legacy = true
	}
	if pos.legacy {
		if at != 0 {
			return fmt.Errorf("%w: at %d from an agent that sent no offsets", errStreamOffset, at)
		}
		// Counted all the same, under the same bound.
		if n > maxStreamOffset-1-pos.next {
			return fmt.Errorf("%w: %d bytes past %d", errStreamOffset, n, pos.next)
		}
		pos.next += n
		return nil
	}
	// One byte stays free under the bound: a partial line written as an F
	// record at EOF counts the newline it stands for.
	if at >= maxStreamOffset || n > maxStreamOffset-1-at {
		return fmt.Errorf("%w: %d bytes at %d", errStreamOffset, n, at)
	}
	switch {
	case at == pos.next:
	case first && at > pos.next:
		lost := at - pos.next
		log.WithField("lost", lost).Warn("output the agent no longer held when cocoond came back is lost")
		o.mu.Lock()
		o.written[idx] += lost
		o.mark.Base[idx] += lost
		mark := o.mark
		o.mu.Unlock()
		// Saved outside o.mu: the store's lock is taken while holding o.mu
		// only at rotation, whose save must not let a record in first. A
		// later save carries this base too, so losing a race costs nothing.
		if o.persist != nil {
			if err := o.persist(mark); err != nil {
				log.WithError(err).Warn("saving the log mark")
			}
		}
	default:
		return fmt.Errorf("%w: at %d, expected %d", errStreamOffset, at, pos.next)
	}
	pos.offset = pos.offset || at != 0
	pos.next = at + n
	return nil
}

// streamNames are the CRI log's names of stdout and stderr.
var streamNames = [2]string{"stdout", "stderr"}

// writeRecord appends "<RFC3339Nano> <stream> <P|F> <text>\n" and counts the
// stream bytes it holds: the text, and the newline an F record stands for.
func (o *output) writeRecord(idx int, tag string, text []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file == nil {
		return
	}
	line := make([]byte, 0, len(text)+64)
	line = time.Now().UTC().AppendFormat(line, time.RFC3339Nano)
	line = append(line, ' ')
	line = append(line, streamNames[idx]...)
	line = append(line, ' ')
	line = append(line, tag...)
	line = append(line, ' ')
	line = append(line, text...)
	line = append(line, '\n')
	// One write per record: a crash leaves whole records (but see
	// countLog for a torn one). Only what reached the file is counted, and
	// a partial write (a full disk) is cut off again, so the next record
	// does not run into it.
	if n, err := o.file.Write(line); err != nil {
		if n > 0 {
			if st, serr := o.file.Stat(); serr == nil && st.Size() >= int64(n) {
				_ = o.file.Truncate(st.Size() - int64(n))
			}
		}
		return
	}
	o.written[idx] += uint64(len(text))
	if tag == "F" {
		o.written[idx]++
	}
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
