package sandbox

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/api/agent/agenttest"
)

// TestAttachQueueBounded: an attached client that never reads holds at most
// maxAttachQueue of the guest's output, however large its chunks.
func TestAttachQueueBounded(t *testing.T) {
	t.Parallel()
	o, err := newOutput("")
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	stuck := o.subscribe("stdout")
	defer stuck.cancel()
	reading := o.subscribe("stdout")
	defer reading.cancel()
	got := make(chan int)
	go func() {
		n := 0
		for {
			data, ok := reading.next()
			if !ok {
				got <- n
				return
			}
			n += len(data)
		}
	}()
	before := liveHeap()
	chunk := make([]byte, 1<<20)
	for range 100 {
		o.fanOut("stdout", chunk)
	}
	grown := int64(liveHeap()) - int64(before)
	o.mu.Lock()
	queued, lost := stuck.queued, stuck.lost
	o.mu.Unlock()
	if queued > maxAttachQueue || lost < 90<<20 {
		t.Fatalf("a client that never reads holds %d bytes (lost %d), want at most %d", queued, lost, maxAttachQueue)
	}
	if grown > 16<<20 {
		t.Fatalf("heap grew by %d MiB for 100 MiB fanned out", grown>>20)
	}
	reading.cancel()
	if n := <-got; n == 0 {
		t.Fatal("the reading client got nothing")
	}
}

// TestLogLineWithoutNewline: a guest printing 40 MiB without a newline
// makes 16 KiB partial records, and no buffer grows with it.
func TestLogLineWithoutNewline(t *testing.T) {
	t.Parallel()
	h := &agenttest.Hostile{Output: agenttest.OutputFinite, Bytes: 40 << 20, Chunk: 1 << 20}
	a := agenttest.ServeAgent(t, h)
	path := filepath.Join(t.TempDir(), "c.log")
	o, err := newOutput(path)
	if err != nil {
		t.Fatal(err)
	}
	before := liveHeap()
	log := logrus.NewEntry(logrus.New())
	if err := o.copyStream(context.Background(), noNewline{a}, "c", agentapi.ReadOutputRequest_STDOUT, log); err != nil {
		t.Fatal(err)
	}
	select {
	case <-o.finished():
	case <-time.After(30 * time.Second):
		t.Fatal("stream did not end")
	}
	if grown := int64(liveHeap()) - int64(before); grown > 16<<20 {
		t.Fatalf("heap grew by %d MiB", grown>>20)
	}
	o.close()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	records := 0
	for sc.Scan() {
		records++
		if len(sc.Bytes()) > maxLogLine+64 {
			t.Fatalf("record of %d bytes", len(sc.Bytes()))
		}
	}
	if err := sc.Err(); err != nil || records < (40<<20)/maxLogLine {
		t.Fatalf("%d records, %v", records, err)
	}
	runtime.KeepAlive(o)
}

// noNewline turns the hostile agent's output into one endless line.
type noNewline struct{ agentapi.AgentClient }

func (n noNewline) ReadOutput(ctx context.Context, req *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	s, err := n.AgentClient.ReadOutput(ctx, req)
	return noNewlineStream{s}, err
}

type noNewlineStream struct {
	agentapi.Agent_ReadOutputClient
}

func (s noNewlineStream) Recv() (*agentapi.OutputChunk, error) {
	c, err := s.Agent_ReadOutputClient.Recv()
	if c != nil {
		for i, b := range c.Data {
			if b == '\n' {
				c.Data[i] = 'y'
			}
		}
	}
	return c, err
}

// TestOutputStreamsEndWithOutput: a container's log streams end when its
// output is closed (container removed, pod stopped), even when the agent
// holds them open and they were read on a context that never ends.
func TestOutputStreamsEndWithOutput(t *testing.T) {
	t.Parallel()
	a := agenttest.ServeAgent(t, &agenttest.Hostile{Output: agenttest.OutputHeldOpen, Bytes: 10})
	o, err := newOutput("")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []agentapi.ReadOutputRequest_Stream{agentapi.ReadOutputRequest_STDOUT, agentapi.ReadOutputRequest_STDERR} {
		if err := o.copyStream(context.Background(), a, "c", s, logrus.NewEntry(logrus.New())); err != nil {
			t.Fatal(err)
		}
	}
	o.close()
	select {
	case <-o.finished():
	case <-time.After(2 * time.Second):
		t.Fatal("the output streams outlived their output")
	}
}

// TestPodEndEndsLongPolls: a container's exit wait on a live agent ends when
// the pod stops, rather than staying on context.Background().
func TestPodEndEndsLongPolls(t *testing.T) {
	t.Parallel()
	m := testManager(t, &fakeNetwork{}, &fakeDriver{})
	id, rt := hostilePod(t, m, "w", &agenttest.Hostile{Exit: -1})
	done := make(chan struct{})
	go func() { m.waitExit(rt, id); close(done) }()
	time.Sleep(100 * time.Millisecond)
	rt.closeOutputs() // StopPod
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("waitExit outlived the pod")
	}
}
