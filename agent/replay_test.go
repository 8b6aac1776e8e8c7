package agent

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-runtime/cocoon/agentclient"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// stream returns n bytes of a recognisable stream starting at offset from.
func streamBytes(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((from + i) % 251)
	}
	return b
}

func TestReplayWindow(t *testing.T) {
	for _, tc := range []struct {
		name     string
		limit    int
		sends    []int // chunk sizes sent, in order
		resume   uint64
		wantFrom uint64 // offset of the first byte given back
		wantErr  error
	}{
		{"nothing sent, fresh reader", 1000, nil, 0, 0, nil},
		{"resume within the window", 1000, []int{300, 300}, 250, 250, nil},
		{"resume at the end", 1000, []int{300, 300}, 600, 600, nil},
		{"resume from 0, all still held", 1000, []int{10, 20, 30}, 0, 0, nil},
		{"resume older than the window", 1000, []int{700, 700}, 100, 400, nil},
		{"one chunk larger than the window", 1000, []int{2500}, 0, 1500, nil},
		{"wrapped many times", 1000, []int{333, 333, 333, 333, 333, 333, 1}, 1500, 1500, nil},
		{"resume beyond what was sent", 1000, []int{100}, 101, 0, errBeyondSent},
		{"resume beyond on an idle stream", 1000, nil, 1, 0, errBeyondSent},
		// Growing moves held bytes: 4 KiB, 8 KiB, 16 KiB, then a ring.
		{"grown while holding bytes", 16 << 10, []int{3000, 3000, 3000, 3000, 3000}, 0, 0, nil},
		{"grown to the limit, then wrapped", 16 << 10, []int{3000, 3000, 3000, 3000, 3000, 3000, 3000, 3000}, 100, 24000 - 16<<10, nil},
		{"grown by one big chunk", 16 << 10, []int{100, 10000}, 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := replayWindow{limit: tc.limit}
			sent := 0
			for _, n := range tc.sends {
				w.add(streamBytes(sent, n))
				sent += n
			}
			data, from, err := w.since(tc.resume)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("since(%d): %v, want %v", tc.resume, err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if from != tc.wantFrom {
				t.Fatalf("since(%d) starts at %d, want %d", tc.resume, from, tc.wantFrom)
			}
			if want := streamBytes(int(from), sent-int(from)); !bytes.Equal(data, want) {
				t.Fatalf("since(%d) gave %d bytes that differ from the %d sent from %d", tc.resume, len(data), len(want), from)
			}
			if len(w.ring) > tc.limit {
				t.Fatalf("window grew to %d bytes, limit %d", len(w.ring), tc.limit)
			}
		})
	}
}

// TestReplayWindowMemory: an idle stream costs nothing, a quiet one little,
// and a flood never more than the limit.
func TestReplayWindowMemory(t *testing.T) {
	var idle replayWindow
	if _, _, err := idle.since(0); err != nil || idle.ring != nil {
		t.Fatalf("idle stream: ring %d bytes, %v", len(idle.ring), err)
	}
	var quiet replayWindow
	quiet.add([]byte("tick-0\n"))
	if len(quiet.ring) != replayMinGrowth {
		t.Fatalf("one short line allocated %d bytes, want %d", len(quiet.ring), replayMinGrowth)
	}
	var flood replayWindow
	chunk := make([]byte, 32<<10)
	for range 1000 { // 32 MiB
		flood.add(chunk)
	}
	if len(flood.ring) != replayWindowSize || flood.end != 1000*32<<10 {
		t.Fatalf("flood: ring %d bytes (limit %d), end %d", len(flood.ring), replayWindowSize, flood.end)
	}
}

// TestReadOutputResumes: a second reader of a stream gets what it asks from
// the offset it names; an offset past what was sent is refused.
func TestReadOutputResumes(t *testing.T) {
	defer func(g time.Duration) { forgetGrace = g }(forgetGrace)
	forgetGrace = 5 * time.Second
	hostShell(t)
	// Each reader has its own connection, closed when it is dropped: the
	// agent sees its reader die as it sees a killed cocoond's.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeOn(sctx, l, NewServer(func() {}, Policy{Token: testToken, DebugConsole: true})) }()
	defer func() { stop(); <-served }()
	dial := func() (agentapi.AgentClient, func()) {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c := ttrpc.NewClient(conn, agentclient.WithToken(testToken))
		// A stream is admitted on a connection that made a call first.
		if _, err := agentapi.NewHealthClient(c).Check(context.Background(), &agentapi.CheckRequest{}); err != nil {
			t.Fatal(err)
		}
		return agentapi.NewAgentClient(c), func() { c.Close() }
	}
	a, closeA := dial()
	defer closeA()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = a.ExecProcess(ctx, &agentapi.ExecProcessRequest{ExecId: "sh1", GuestRoot: true, Stdin: true,
		Process: guestProcessJSON(t, nil, "sh")})
	if err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		if _, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{ExecId: "sh1", Data: []byte(s)}); err != nil {
			t.Fatal(err)
		}
	}
	// read opens a reader at offset and collects until it has want bytes;
	// the reader is then dropped, as a killed cocoond drops it.
	read := func(offset uint64, want int) (string, uint64, error) {
		r, drop := dial()
		defer drop()
		var stream agentapi.Agent_ReadOutputClient
		var first *agentapi.OutputChunk
		for {
			stream, err = r.ReadOutput(ctx, &agentapi.ReadOutputRequest{ExecId: "sh1", Offset: offset})
			if err == nil {
				first, err = stream.Recv()
			}
			// The dropped reader's stream lets go within half a second.
			if status.Code(err) != codes.FailedPrecondition {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			return "", 0, err
		}
		got := append([]byte(nil), first.GetData()...)
		next := first.GetOffset() + uint64(len(got))
		for len(got) < want {
			c, err := stream.Recv()
			if err != nil {
				t.Fatalf("after %q: %v", got, err)
			}
			if c.GetOffset() != next {
				t.Fatalf("chunk at %d, want %d", c.GetOffset(), next)
			}
			got = append(got, c.GetData()...)
			next += uint64(len(c.GetData()))
		}
		return string(got), first.GetOffset(), nil
	}

	write("echo one; echo two\n")
	if got, at, err := read(0, 8); err != nil || got != "one\ntwo\n" || at != 0 {
		t.Fatalf("first reader: %q at %d, %v", got, at, err)
	}
	// The reader persisted "one\n" only: the next one resumes at 4 and
	// then streams on.
	write("echo three\n")
	if got, at, err := read(4, 10); err != nil || got != "two\nthree\n" || at != 4 {
		t.Fatalf("resumed reader: %q at %d, %v", got, at, err)
	}
	if _, _, err := read(15, 1); status.Code(err) != codes.OutOfRange {
		t.Fatalf("resume past what was sent: %v, want OutOfRange", err)
	}
	write("exit 0\n")
	if _, err := a.WaitProcess(ctx, &agentapi.ProcessRequest{ExecId: "sh1"}); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkReplayWindowAdd is the window's cost per chunk a stream sends:
// full 32 KiB reads of a flood, and one short line.
func BenchmarkReplayWindowAdd(b *testing.B) {
	for _, size := range []int{32 << 10, 12} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			var w replayWindow
			chunk := streamBytes(0, size)
			b.SetBytes(int64(size))
			for b.Loop() {
				w.add(chunk)
			}
		})
	}
}

// TestReplayWindowMatchesStream: after any run of sends, whatever the sizes,
// every resume point gives back exactly the stream's bytes from there, or
// from the window's start, which holds the last limit bytes.
func TestReplayWindowMatchesStream(t *testing.T) {
	const limit = 16 << 10
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(14, seed))
		w := replayWindow{limit: limit}
		sent := 0
		for range 200 {
			n := r.IntN(3 * limit / 2)
			if r.IntN(4) > 0 {
				n = r.IntN(200)
			}
			w.add(streamBytes(sent, n))
			sent += n
			for _, x := range []uint64{0, uint64(r.IntN(sent + 1)), uint64(sent)} {
				data, from, err := w.since(x)
				if err != nil {
					t.Fatal(err)
				}
				wantFrom := max(x, uint64(max(0, sent-limit)))
				if from != wantFrom || !bytes.Equal(data, streamBytes(int(from), sent-int(from))) {
					t.Fatalf("seed %d: after %d bytes, since(%d) gave %d bytes from %d, want from %d", seed, sent, x, len(data), from, wantFrom)
				}
			}
		}
	}
}
