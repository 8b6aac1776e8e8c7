package sandbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// The tests here are not parallel: TestLogLineWithoutNewline measures the
// process's heap while it runs.

const ts = "2026-12-06T08:00:00.123456789Z"

func TestCountLog(t *testing.T) {
	long := strings.Repeat("x", 70<<10) // longer than countLog's buffer: not ours
	for _, tc := range []struct {
		name         string
		file         string
		want         [2]uint64
		wantComplete int
		wantTorn     bool
	}{
		{"empty", "", [2]uint64{}, 0, false},
		{"one full line", ts + " stdout F hello\n", [2]uint64{6, 0}, 46, false},
		{"partial adds no newline", ts + " stdout P hel\n" + ts + " stdout F lo\n", [2]uint64{6, 0}, 87, false},
		{"both streams", ts + " stdout F a\n" + ts + " stderr F bc\n" + ts + " stderr P d\n", [2]uint64{2, 4}, 127, false},
		{"empty line", ts + " stdout F \n", [2]uint64{1, 0}, 41, false},
		{"text with spaces and tags", ts + " stderr F  F x \n", [2]uint64{0, 6}, 46, false},
		{"torn last record", ts + " stdout F a\n" + ts + " stdout F tick-1", [2]uint64{2, 0}, 42, true},
		{"torn inside the prefix", ts + " stdout F a\n2026-12-06T08", [2]uint64{2, 0}, 42, true},
		{"foreign lines count nothing", "garbage\n" + ts + " stdin F x\n" + ts + " stdout X y\n" + ts + " stdout F ok\n", [2]uint64{3, 0}, 134, false},
		{"a foreign line longer than the buffer", long + "\n" + ts + " stdout F ok\n", [2]uint64{3, 0}, len(long) + 1 + 43, false},
		{"torn foreign long line", ts + " stdout F ok\n" + long, [2]uint64{3, 0}, 43, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := countLog(strings.NewReader(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if c.bytes != tc.want || c.complete != int64(tc.wantComplete) || c.torn != tc.wantTorn {
				t.Fatalf("countLog = %v complete %d torn %v, want %v complete %d torn %v", c.bytes, c.complete, c.torn, tc.want, tc.wantComplete, tc.wantTorn)
			}
		})
	}
}

func TestRecoverOutput(t *testing.T) {
	older := ts + " stdout F from an earlier container\n"
	for _, tc := range []struct {
		name     string
		file     string
		mark     LogMark
		want     [2]uint64
		wantFile string
		wantTorn bool
	}{
		{"no file yet", "", LogMark{}, [2]uint64{}, "", false},
		{"records since the start", ts + " stdout F ab\n" + ts + " stderr P c\n", LogMark{}, [2]uint64{3, 1}, "", false},
		{"base of rotated files", ts + " stdout F ab\n", LogMark{Base: [2]uint64{100, 7}}, [2]uint64{103, 7}, "", false},
		{"reused file: older records are not ours", older + ts + " stdout F ab\n", LogMark{Start: int64(len(older))}, [2]uint64{3, 0}, "", false},
		{"torn record cut off", ts + " stdout F ab\n" + ts + " stdout F tor", LogMark{}, [2]uint64{3, 0}, ts + " stdout F ab\n", true},
		{"file shorter than its start", ts + " stdout F ab\n", LogMark{Start: 1 << 20}, [2]uint64{3, 0}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "0.log")
			if tc.file != "" {
				if err := os.WriteFile(path, []byte(tc.file), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			o, found, err := recoverOutput(context.Background(), path, tc.mark)
			if err != nil || found.uncounted != nil {
				t.Fatal(err, found.uncounted)
			}
			defer o.close()
			if o.written != tc.want || found.torn != tc.wantTorn {
				t.Fatalf("written %v torn %v, want %v %v", o.written, found.torn, tc.want, tc.wantTorn)
			}
			if tc.wantFile != "" {
				got, _ := os.ReadFile(path)
				if string(got) != tc.wantFile {
					t.Fatalf("file after recovery %q, want %q", got, tc.wantFile)
				}
			}
			// The next record appends after what stays.
			o.writeRecord(0, "F", []byte("next"))
			if got, _ := os.ReadFile(path); !bytes.HasSuffix(got, []byte(" stdout F next\n")) || bytes.Count(got, []byte("\n")) != strings.Count(tc.file, "\n")+1 {
				t.Fatalf("file after a record %q", got)
			}
		})
	}
}

// TestRotationKeepsCount: at a reopen the old file's bytes join the base,
// saved before the new file gets a record, so a restarted cocoond derives
// the same offsets from the new file and the record.
func TestRotationKeepsCount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	o, err := newOutput(path)
	if err != nil {
		t.Fatal(err)
	}
	var saved []LogMark
	o.persist = func(m LogMark) error { saved = append(saved, m); return nil }
	o.writeRecord(0, "F", []byte("hello"))
	o.writeRecord(1, "P", []byte("err"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := o.reopen(); err != nil {
		t.Fatal(err)
	}
	if want := (LogMark{Base: [2]uint64{6, 3}}); len(saved) != 1 || saved[0] != want {
		t.Fatalf("saved at reopen %v, want [%v]", saved, want)
	}
	o.writeRecord(0, "F", []byte("after"))
	written := o.written
	o.close()
	r, _, err := recoverOutput(context.Background(), path, saved[0])
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if r.written != written || written != [2]uint64{12, 3} {
		t.Fatalf("recovered %v, counted while writing %v, want [12 3]", r.written, written)
	}

	// A mark that cannot be saved keeps the old file: kubelet renames it
	// back and retries.
	o2, err := newOutput(path)
	if err != nil {
		t.Fatal(err)
	}
	defer o2.close()
	o2.persist = func(LogMark) error { return os.ErrPermission }
	if err := o2.reopen(); err == nil {
		t.Fatal("reopen succeeded without saving its mark")
	}
	if o2.logMark().Start == 0 {
		t.Fatal("the mark changed although it was not saved")
	}
}

// offsetAgent serves a fixed output, honouring resume offsets like the real
// agent: it holds the last window bytes (all when 0), answers OutOfRange
// past the end, and sends chunks of size bytes. recv, when set, runs before
// each chunk is handed over, with the number of chunks handed so far.
type offsetAgent struct {
	agentapi.AgentClient
	data   []byte
	window int
	size   int
	recv   func(n int)
	asked  []uint64
}

func (a *offsetAgent) ReadOutput(_ context.Context, req *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	a.asked = append(a.asked, req.GetOffset())
	end := uint64(len(a.data))
	if req.GetOffset() > end {
		return &scriptStream{err: status.Error(codes.OutOfRange, "beyond sent")}, nil
	}
	from := req.GetOffset()
	if a.window > 0 && end-from > uint64(a.window) {
		from = end - uint64(a.window)
	}
	s := &scriptStream{recv: a.recv}
	for at := from; at < end; at += uint64(a.size) {
		s.chunks = append(s.chunks, &agentapi.OutputChunk{Offset: at, Data: a.data[at:min(end, at+uint64(a.size))]})
	}
	return s, nil
}

// scriptStream hands out its chunks, then err (EOF when nil).
type scriptStream struct {
	ttrpc.ClientStream
	chunks []*agentapi.OutputChunk
	err    error
	recv   func(n int)
	n      int
}

func (s *scriptStream) Recv() (*agentapi.OutputChunk, error) {
	if s.recv != nil {
		s.recv(s.n)
	}
	if len(s.chunks) == 0 {
		if s.err != nil {
			return nil, s.err
		}
		return nil, io.EOF
	}
	c := s.chunks[0]
	s.chunks = s.chunks[1:]
	s.n++
	return c, nil
}

// streamOf gives back a stream's bytes from a log's records.
func streamOf(t *testing.T, log []byte, idx int) []byte {
	t.Helper()
	var out []byte
	for _, line := range bytes.SplitAfter(log, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		m := criRecord.FindSubmatch(bytes.TrimSuffix(line, []byte("\n")))
		if m == nil {
			t.Fatalf("not a record: %q", line)
		}
		if string(m[2]) != streamNames[idx] {
			continue
		}
		out = append(out, m[4]...)
		if string(m[3]) == "F" {
			out = append(out, '\n')
		}
	}
	return out
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func waitFinished(t *testing.T, o *output) {
	t.Helper()
	select {
	case <-o.finished():
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end")
	}
}

// TestResumeAfterCrash: cocoond is killed after any chunk, with a partial
// line in hand or a record torn; the next one derives its offset from the
// file and the agent's resend completes the log exactly, or, past the
// agent's window, tells how much is gone and writes nothing in its place.
func TestResumeAfterCrash(t *testing.T) {
	var data []byte
	for i := range 300 {
		line := []byte(strings.Repeat("t", i%7) + "tick-")
		line = binary.AppendUvarint(line, uint64(i)) // any bytes but newline
		data = append(append(data, bytes.ReplaceAll(line, []byte("\n"), []byte("n"))...), '\n')
		if i == 150 {
			data = append(data, bytes.Repeat([]byte("L"), maxLogLine+100)...) // a line split in P records
		}
	}
	for _, tc := range []struct {
		name    string
		size    int // bytes per chunk
		crashAt int // chunks handed over before the crash
		torn    string
		window  int // the agent's window at resume; 0: everything
		lossy   bool
	}{
		{"crash before any output", 7, 0, "", 0, false},
		{"crash with a partial line pending", 7, 33, "", 0, false},
		{"crash on a line boundary", 1, 9, "", 0, false},
		{"crash inside a long line", 1000, 5, "", 0, false},
		{"crash right after the long line", 1000, 18, "", 0, false},
		{"crash tearing a record", 13, 40, ts + " stdout F tick-", 0, false},
		{"crash past the agent's window", 50, 20, "", 100, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "0.log")
			o, err := newOutput(path)
			if err != nil {
				t.Fatal(err)
			}
			var snapshot []byte
			var once sync.Once
			first := &offsetAgent{data: data, size: tc.size, recv: func(n int) {
				if n == tc.crashAt {
					once.Do(func() { snapshot, _ = os.ReadFile(path) })
				}
			}}
			if err := o.copyStream(context.Background(), first, "c", agentapi.ReadOutputRequest_STDOUT, quietLog()); err != nil {
				t.Fatal(err)
			}
			waitFinished(t, o)
			o.close()

			// What the killed cocoond left on disk, and a new cocoond on it.
			crashed := filepath.Join(dir, "crashed.log")
			if err := os.WriteFile(crashed, append(snapshot, tc.torn...), 0o640); err != nil {
				t.Fatal(err)
			}
			r, _, err := recoverOutput(context.Background(), crashed, LogMark{})
			if err != nil {
				t.Fatal(err)
			}
			var saved []LogMark
			r.persist = func(m LogMark) error { saved = append(saved, m); return nil }
			persisted := r.written[0]
			second := &offsetAgent{data: data, size: tc.size, window: tc.window}
			if err := r.copyStream(context.Background(), second, "c", agentapi.ReadOutputRequest_STDOUT, quietLog()); err != nil {
				t.Fatal(err)
			}
			waitFinished(t, r)
			r.close()
			if second.asked[0] != persisted || persisted > uint64(len(data)) {
				t.Fatalf("asked from %d, persisted %d", second.asked[0], persisted)
			}
			log, _ := os.ReadFile(crashed)
			got := streamOf(t, log, 0)
			want := data
			if tc.lossy {
				lost := uint64(len(data)-tc.window) - persisted
				want = append(append([]byte(nil), data[:persisted]...), data[len(data)-tc.window:]...)
				if len(saved) != 1 || saved[0].Base[0] != lost || r.written[0] != uint64(len(data)) {
					t.Fatalf("saved %v, written %v; want base %d", saved, r.written, lost)
				}
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("log gives back %d bytes, want %d\n got %.300q\nwant %.300q", len(got), len(want), got, want)
			}
		})
	}
}

// TestLyingAgent: chunks whose offsets do not continue the stream end it
// with what came before in the log; a first chunk far ahead of the offset
// asked only counts as lost bytes (no allocation, no skipping in the file);
// no offset can overflow the count.
func TestLyingAgent(t *testing.T) {
	chunk := func(at uint64, s string) *agentapi.OutputChunk {
		return &agentapi.OutputChunk{Offset: at, Data: []byte(s)}
	}
	for _, tc := range []struct {
		name      string
		asked     uint64 // what the log holds already
		chunks    []*agentapi.OutputChunk
		wantText  string // what the log gives back after the stream
		wantBase  uint64 // stdout base saved
		wantSaves int
	}{
		{"honest", 5, []*agentapi.OutputChunk{chunk(5, "a\n"), chunk(7, "b\n")}, "a\nb\n", 0, 0},
		{"first chunk before the offset asked", 5, []*agentapi.OutputChunk{chunk(4, "xa\n")}, "", 0, 0},
		{"gap after the first chunk", 0, []*agentapi.OutputChunk{chunk(0, "a\n"), chunk(9, "b\n")}, "a\n", 0, 0},
		{"overlap after the first chunk", 0, []*agentapi.OutputChunk{chunk(0, "a\nb"), chunk(2, "b\n")}, "a\nb", 0, 0},
		{"lost bytes reported once", 0, []*agentapi.OutputChunk{chunk(1<<40, "a\n"), chunk(1<<40+2, "b\n")}, "a\nb\n", 1 << 40, 1},
		{"a second gap is no loss but a lie", 0, []*agentapi.OutputChunk{chunk(10, "a\n"), chunk(20, "b\n")}, "a\n", 10, 1},
		{"offset past the bound", 0, []*agentapi.OutputChunk{chunk(maxStreamOffset+1, "a\n")}, "", 0, 0},
		{"length running past the bound", 0, []*agentapi.OutputChunk{chunk(maxStreamOffset-1, "abc\n")}, "", 0, 0},
		{"offset wrapping uint64", 0, []*agentapi.OutputChunk{chunk(0, "a"), chunk(^uint64(0), "b\n")}, "a", 0, 0},
		{"agent older than offsets, fresh stream", 0, []*agentapi.OutputChunk{chunk(0, "a\n"), chunk(0, "b\n")}, "a\nb\n", 0, 0},
		{"agent older than offsets, resumed", 5, []*agentapi.OutputChunk{chunk(0, "a\n"), chunk(0, "b\n")}, "a\nb\n", 0, 0},
		{"an old agent's chunks all say 0", 5, []*agentapi.OutputChunk{chunk(0, "a\n"), chunk(7, "b\n")}, "a\n", 0, 0},
		{"no falling back once offsets came", 0, []*agentapi.OutputChunk{chunk(0, "a\n"), chunk(2, "b\n"), chunk(0, "c\n")}, "a\nb\n", 0, 0},
		{"empty chunks in place", 0, []*agentapi.OutputChunk{chunk(0, ""), chunk(0, "a\n"), chunk(2, "")}, "a\n", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "0.log")
			o, err := newOutput(path)
			if err != nil {
				t.Fatal(err)
			}
			o.written[0] = tc.asked
			o.mark.Base[0] = tc.asked // as if rotated away
			saves := 0
			o.persist = func(LogMark) error { saves++; return nil }
			a := &scriptAgent{stream: &scriptStream{chunks: tc.chunks}}
			if err := o.copyStream(context.Background(), a, "c", agentapi.ReadOutputRequest_STDOUT, quietLog()); err != nil {
				t.Fatal(err)
			}
			waitFinished(t, o)
			o.close()
			if a.asked != tc.asked {
				t.Fatalf("asked from %d, want %d", a.asked, tc.asked)
			}
			log, _ := os.ReadFile(path)
			if got := string(streamOf(t, log, 0)); got != tc.wantText {
				t.Fatalf("log gives back %q, want %q", got, tc.wantText)
			}
			if base := o.mark.Base[0] - tc.asked; base != tc.wantBase || saves != tc.wantSaves {
				t.Fatalf("base grew by %d with %d saves, want %d with %d", base, saves, tc.wantBase, tc.wantSaves)
			}
			checkCountMatchesFile(t, o, log)
		})
	}
}

// checkCountMatchesFile: what cocoond counted while writing is what a
// restarted one derives from the file and the mark.
func checkCountMatchesFile(t *testing.T, o *output, log []byte) {
	t.Helper()
	c, err := countLog(bytes.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	for i := range o.written {
		if o.mark.Base[i]+c.bytes[i] != o.written[i] || o.written[i] > maxStreamOffset {
			t.Fatalf("stream %d: counted %d while writing, file and mark say %d+%d", i, o.written[i], o.mark.Base[i], c.bytes[i])
		}
	}
}

// scriptAgent serves one scripted stream and records the offset asked.
type scriptAgent struct {
	agentapi.AgentClient
	stream *scriptStream
	asked  uint64
}

func (a *scriptAgent) ReadOutput(_ context.Context, req *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	a.asked = req.GetOffset()
	return a.stream, nil
}

// FuzzLyingAgent lets the fuzzer pick every chunk's offset and bytes: the
// log stays well-formed CRI records, its count always matches what cocoond
// counted, and no offset takes it past the bound.
func FuzzLyingAgent(f *testing.F) {
	f.Add(uint64(0), []byte("\x00\x00\x00\x00\x00\x00\x00\x00a\nb"))
	f.Add(uint64(3), []byte("\xff\xff\xff\xff\xff\xff\xff\x3fxyz\n"))
	f.Add(uint64(1<<62), []byte("\x00\x00\x00\x00\x00\x00\x00\x40\n\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, asked uint64, script []byte) {
		asked %= maxStreamOffset
		// The script is chunks of an 8-byte offset, a length byte and data.
		var chunks []*agentapi.OutputChunk
		for len(script) >= 9 {
			at := binary.LittleEndian.Uint64(script)
			n := min(int(script[8]), len(script)-9)
			chunks = append(chunks, &agentapi.OutputChunk{Offset: at, Data: script[9 : 9+n]})
			script = script[9+n:]
		}
		path := filepath.Join(dir, "0.log")
		_ = os.Remove(path)
		o, err := newOutput(path)
		if err != nil {
			t.Fatal(err)
		}
		o.written[0], o.mark.Base[0] = asked, asked
		o.persist = func(LogMark) error { return nil }
		if err := o.copyStream(context.Background(), &scriptAgent{stream: &scriptStream{chunks: chunks}}, "c", agentapi.ReadOutputRequest_STDOUT, quietLog()); err != nil {
			t.Fatal(err)
		}
		waitFinished(t, o)
		o.close()
		log, _ := os.ReadFile(path)
		streamOf(t, log, 0) // every line a record
		checkCountMatchesFile(t, o, log)
	})
}
