package sandbox

import (
	"context"
	"sync"
	"time"
)

// agentCallTimeout bounds one short agent call (signal, stdin close, stats,
// kill of an abandoned process) that has no caller's deadline to inherit: a
// silent or hostile agent must not hold a cocoond goroutine forever.
const agentCallTimeout = 10 * time.Second

// lifetime is a pod runtime's context. The long polls on its agent (a
// container's exit, its output streams) run on it rather than on
// context.Background(), so they end when the pod is stopped or removed or its
// VM dies. The zero value is ready: the context is made on first use, so
// every place that builds a podRuntime gets one without knowing of it.
type lifetime struct {
	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc
}

// context is the pod runtime's lifetime context.
func (rt *podRuntime) context() context.Context {
	rt.life.once.Do(func() {
		rt.life.ctx, rt.life.cancel = context.WithCancel(context.Background())
		if rt.vmm != nil {
			done, ctx, cancel := rt.vmm.Done(), rt.life.ctx, rt.life.cancel
			go func() {
				select {
				case <-done:
					cancel()
				case <-ctx.Done():
				}
			}()
		}
	})
	return rt.life.ctx
}

// end cancels the pod runtime's lifetime context (the pod stops).
func (rt *podRuntime) end() {
	rt.context()
	rt.life.cancel()
}

// shortCall is a context for one short agent call: parent's deadline when it
// is sooner, agentCallTimeout otherwise, and cancelled when the pod ends.
func (rt *podRuntime) shortCall(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, agentCallTimeout)
	stop := context.AfterFunc(rt.context(), cancel)
	return ctx, func() { stop(); cancel() }
}
