package sandbox

import (
	"context"
	"net"
	"sync"

	"github.com/cocoon-runtime/cocoon/agentclient"
)

// Detach is what an exiting cocoond does with the pods it leaves running
// (the next cocoond adopts them): it half-closes each agent connection and
// waits, up to ctx, for every container's log copier to write what the
// agent still sends. The agent's server sees the end of the requests and
// closes the connection; whatever it wrote before that is read and logged,
// and output it had not sent yet stays with it for the next cocoond's
// reader. Cutting the connection at exit instead loses what is in flight
// (a line or two of every busy container's log).
func (m *Manager) Detach(ctx context.Context) {
	m.mu.Lock()
	rts := make([]*podRuntime, 0, len(m.live))
	for _, rt := range m.live {
		rts = append(rts, rt)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, rt := range rts {
		if rt.conn == nil || !closeWrite(rt.conn) {
			continue
		}
		rt.mu.Lock()
		for _, o := range rt.outputs {
			wg.Add(1)
			go func() { defer wg.Done(); o.done.Wait() }()
		}
		rt.mu.Unlock()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		m.opts.Log.Warn("container logs still copying at exit: their last output is the next cocoond's")
	}
}

// closeWrite half-closes an agent connection where its transport can (a
// unix socket: host pods, QEMU's serial chardev, Cloud Hypervisor's hybrid
// vsock); it reports whether it did.
func closeWrite(c net.Conn) bool {
	if tc, ok := c.(*agentclient.TokenConn); ok {
		c = tc.Conn
	}
	hc, ok := c.(interface{ CloseWrite() error })
	return ok && hc.CloseWrite() == nil
}
