package sandbox

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// chunkAgent serves one ReadOutput stream of scripted chunks, then EOF.
type chunkAgent struct {
	agentapi.AgentClient
	chunks [][]byte
}

func (a *chunkAgent) ReadOutput(context.Context, *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	return &chunkStream{chunks: a.chunks}, nil
}

type chunkStream struct {
	ttrpc.ClientStream
	chunks [][]byte
	offset uint64
}

func (s *chunkStream) Recv() (*agentapi.OutputChunk, error) {
	if len(s.chunks) == 0 {
		return nil, io.EOF
	}
	c := s.chunks[0]
	s.chunks = s.chunks[1:]
	s.offset += uint64(len(c))
	return &agentapi.OutputChunk{Data: c, Offset: s.offset - uint64(len(c))}, nil
}

// criRecord is one CRI log line: "<RFC3339Nano> <stream> <P|F> <text>".
var criRecord = regexp.MustCompile(`(?s)^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) (stdout|stderr) (P|F) (.*)$`)

// FuzzLogWriter streams a container's output through copyStream, cut into
// chunks wherever the fuzzer likes. Every line of the log file must be a CRI
// record no longer than maxLogLine, and the records, F ones ending in a
// newline, must give back exactly what the container wrote (plus the newline
// the final F record adds to an unterminated last line).
func FuzzLogWriter(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), []byte{3, 1, 200}, uint16(0))
	f.Add([]byte("no newline at the end"), []byte{0}, uint16(0))
	f.Add([]byte("\n\n\r\n\x00\xff tail"), []byte{1}, uint16(0))
	f.Add([]byte("\nshort after a long line\n"), []byte{255, 17}, uint16(maxLogLine+10))
	f.Add([]byte("exactly one record"), []byte{}, uint16(maxLogLine-18))
	f.Add([]byte{}, []byte{}, uint16(3*maxLogLine))

	dir := f.TempDir()
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetOutput(io.Discard)
	f.Fuzz(func(t *testing.T, data, cuts []byte, pad uint16) {
		// pad long 'x's in front make lines longer than maxLogLine, which
		// small fuzz inputs never reach alone.
		input := append(bytes.Repeat([]byte{'x'}, int(pad)), data...)
		var chunks [][]byte
		for rest, i := input, 0; len(rest) > 0; i++ {
			n := len(rest)
			if len(cuts) > 0 {
				// A cut byte is a chunk size; 0 means a big one.
				n = min(len(rest), int(cuts[i%len(cuts)])+1)
				if cuts[i%len(cuts)] == 0 {
					n = min(len(rest), 40000)
				}
			}
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}

		path := filepath.Join(dir, "0.log")
		_ = os.Remove(path)
		o, err := newOutput(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := o.copyStream(context.Background(), &chunkAgent{chunks: chunks}, "c1", agentapi.ReadOutputRequest_STDOUT, log); err != nil {
			t.Fatal(err)
		}
		select {
		case <-o.finished():
		case <-time.After(10 * time.Second):
			t.Fatal("copyStream did not finish")
		}
		o.close()
		written, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}

		var got []byte
		lastTag := ""
		lines := bytes.SplitAfter(written, []byte("\n"))
		for i, line := range lines {
			if len(line) == 0 && i == len(lines)-1 {
				break
			}
			if !bytes.HasSuffix(line, []byte("\n")) {
				t.Fatalf("record %d does not end in a newline: %q", i, line)
			}
			m := criRecord.FindSubmatch(line[:len(line)-1])
			if m == nil {
				t.Fatalf("record %d is not CRI format: %.200q", i, line)
			}
			if _, err := time.Parse(time.RFC3339Nano, string(m[1])); err != nil {
				t.Fatalf("record %d time: %v", i, err)
			}
			if string(m[2]) != "stdout" {
				t.Fatalf("record %d stream %s", i, m[2])
			}
			text := m[4]
			if len(text) > maxLogLine {
				t.Fatalf("record %d holds %d bytes, more than maxLogLine (%d)", i, len(text), maxLogLine)
			}
			got = append(got, text...)
			lastTag = string(m[3])
			if lastTag == "F" {
				got = append(got, '\n')
			}
		}
		want := input
		if len(input) > 0 && input[len(input)-1] != '\n' && lastTag == "F" {
			want = append(append([]byte(nil), input...), '\n')
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("records give back %d bytes %.200q, want %d bytes %.200q", len(got), got, len(want), want)
		}
	})
}
