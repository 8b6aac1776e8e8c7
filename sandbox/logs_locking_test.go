package sandbox

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// gapAgent answers ReadOutput with one chunk that starts past the offset
// asked (a lying or forgetful agent: the gap is saved as lost), then holds
// the stream open.
type gapAgent struct {
	agentapi.AgentClient
	hold chan struct{} // closed when the test ends
}

func (a gapAgent) ReadOutput(context.Context, *agentapi.ReadOutputRequest) (agentapi.Agent_ReadOutputClient, error) {
	return &gapStream{hold: a.hold}, nil
}

type gapStream struct {
	ttrpc.ClientStream
	hold chan struct{}
	sent bool
}

func (s *gapStream) Recv() (*agentapi.OutputChunk, error) {
	if s.sent {
		<-s.hold
		return nil, io.EOF
	}
	s.sent = true
	return &agentapi.OutputChunk{Data: []byte("x\n"), Offset: 1}, nil
}

// TestLostBytesSaveDoesNotLockTheStore: a guest reporting lost bytes while
// the container's record is being saved must not deadlock the containers
// store every pod shares (o.mu is never taken under the store's lock).
func TestLostBytesSaveDoesNotLockTheStore(t *testing.T) {
	dir := t.TempDir()
	st := newStore(filepath.Join(dir, "containers"), storeHooks[Container]{})
	if err := st.load(logrus.NewEntry(logrus.New())); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c1", "other-pod-ctr"} {
		if err := st.add(Container{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	o, err := newOutput(filepath.Join(dir, "c1.log"))
	if err != nil {
		t.Fatal(err)
	}
	// Closed only on success: after a deadlock close would wait forever.
	inSave, saved := make(chan struct{}), make(chan struct{})
	var once sync.Once
	o.persist = func(mark LogMark) error {
		once.Do(func() { close(inSave) })
		_, err := st.update("c1", func(r *Container) error { r.Log = mark; return nil })
		close(saved)
		return err
	}
	// The create path's own save, holding the store's lock while the
	// stream reports its gap.
	holding, held := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(held)
		_, _ = st.update("c1", func(r *Container) error {
			close(holding)
			select {
			case <-inSave:
			case <-time.After(2 * time.Second):
			}
			r.Log = o.logMark()
			return nil
		})
	}()
	<-holding
	hold := make(chan struct{})
	if err := o.copyStream(context.Background(), gapAgent{hold: hold}, "c1", agentapi.ReadOutputRequest_STDOUT, logrus.NewEntry(logrus.New())); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_, _ = st.update("other-pod-ctr", func(*Container) error { return nil })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the containers store is deadlocked: another pod's container update hangs")
	}
	<-held
	<-saved
	close(hold)
	o.close()
}

// TestRecoverOutputRefusesAFIFO: a FIFO where the log should be would block
// recovery (and every pod's restart) on open; it is refused at once.
func TestRecoverOutputRefusesAFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	if err := syscall.Mkfifo(path, 0o640); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := recoverOutput(context.Background(), path, LogMark{})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a FIFO was taken as a log")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("recoverOutput blocked on a FIFO")
	}
}

// TestRecoverOutputUncountedResumesFromTheBase: a log that cannot be counted
// in time costs duplicates, not the pod: the streams resume from the base
// and the file's end starts a new mark.
func TestRecoverOutputUncountedResumesFromTheBase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	if err := os.WriteFile(path, []byte(ts+" stdout F hello\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a deadline already past
	mark := LogMark{Base: [2]uint64{100, 7}}
	o, found, err := recoverOutput(ctx, path, mark)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	if found.uncounted == nil {
		t.Fatal("counting under an ended context reported no failure")
	}
	size := int64(len(ts + " stdout F hello\n"))
	if o.written != mark.Base || o.mark != (LogMark{Start: size, Base: mark.Base}) {
		t.Fatalf("written %v mark %+v, want %v and a mark from the file's end %d", o.written, o.mark, mark.Base, size)
	}
}
