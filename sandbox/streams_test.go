package sandbox

import (
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// streamRecorder notes which output streams were asked for, each served
// empty (EOF at once).
type streamRecorder struct {
	agentapi.AgentClient
	mu    sync.Mutex
	asked []agentapi.ReadOutputRequest_Stream
}

func (a *streamRecorder) ReadOutput(_ context.Context, req *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	a.mu.Lock()
	a.asked = append(a.asked, req.GetStream())
	a.mu.Unlock()
	return &chunkStream{}, nil
}

func TestCopyStreamsReadsStderrOnlyWithoutATerminal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		tty  bool
		want []agentapi.ReadOutputRequest_Stream
	}{
		{"pipes", false, []agentapi.ReadOutputRequest_Stream{agentapi.ReadOutputRequest_STDOUT, agentapi.ReadOutputRequest_STDERR}},
		{"terminal", true, []agentapi.ReadOutputRequest_Stream{agentapi.ReadOutputRequest_STDOUT}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := newOutput("")
			if err != nil {
				t.Fatal(err)
			}
			defer o.close()
			a := &streamRecorder{}
			log := logrus.NewEntry(logrus.New())
			if err := o.copyStreams(context.Background(), a, "c1", tc.tty, log); err != nil {
				t.Fatal(err)
			}
			o.wait(5 * time.Second)
			if !reflect.DeepEqual(a.asked, tc.want) {
				t.Fatalf("asked for %v, want %v", a.asked, tc.want)
			}
		})
	}
}

// oneByteReader hands out its data a byte a read, then fails with err.
type oneByteReader struct {
	data string
	err  error
}

func (r *oneByteReader) Read(p []byte) (int, error) {
	if r.data == "" {
		return 0, r.err
	}
	p[0], r.data = r.data[0], r.data[1:]
	return 1, nil
}

func TestSendChunks(t *testing.T) {
	t.Parallel()
	sendFailed := errors.New("agent gone")
	for _, tc := range []struct {
		name     string
		in       io.Reader
		failAt   int // the send that fails (1-based); 0: none
		wantSent []string
		wantErr  error
	}{
		{"reader ends", strings.NewReader("hello"), 0, []string{"hello"}, nil},
		{"reader fails", &oneByteReader{"ab", io.ErrUnexpectedEOF}, 0, []string{"a", "b"}, nil},
		{"empty reader sends nothing", strings.NewReader(""), 0, nil, nil},
		{"send fails", &oneByteReader{"abc", io.EOF}, 2, []string{"a", "b"}, sendFailed},
		{"large input is chunked", strings.NewReader(strings.Repeat("x", chunkSize+1)), 0, []string{strings.Repeat("x", chunkSize), "x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent [][]byte
			err := sendChunks(tc.in, func(b []byte) error {
				sent = append(sent, b)
				if len(sent) == tc.failAt {
					return sendFailed
				}
				return nil
			})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			var got []string
			for _, b := range sent {
				got = append(got, string(b))
			}
			if !reflect.DeepEqual(got, tc.wantSent) {
				t.Fatalf("sent %q, want %q", got, tc.wantSent)
			}
		})
	}
}

// TestSendChunksGivesEachSendItsOwnBytes: the agent call may keep a chunk
// after send returns, so the next read must not overwrite it.
func TestSendChunksGivesEachSendItsOwnBytes(t *testing.T) {
	t.Parallel()
	var kept [][]byte
	_ = sendChunks(&oneByteReader{"xyz", io.EOF}, func(b []byte) error { kept = append(kept, b); return nil })
	if got := string(kept[0]) + string(kept[1]) + string(kept[2]); got != "xyz" {
		t.Fatalf("kept chunks read %q, want %q", got, "xyz")
	}
}

func TestResizes(t *testing.T) {
	t.Parallel()
	type size struct{ cols, rows uint16 }
	conv := func(s size) TermSize { return TermSize{Width: s.cols, Height: s.rows} }

	t.Run("converts in order and closes when the input closes", func(t *testing.T) {
		in := make(chan size, 2)
		in <- size{80, 24}
		in <- size{120, 40}
		close(in)
		var got []TermSize
		for sz := range Resizes(context.Background(), in, conv) {
			got = append(got, sz)
		}
		want := []TermSize{{80, 24}, {120, 40}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})

	t.Run("closes when ctx ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		out := Resizes(ctx, make(chan size), conv)
		cancel()
		select {
		case _, ok := <-out:
			if ok {
				t.Fatal("a size came from nowhere")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("output still open after ctx ended")
		}
	})
}
