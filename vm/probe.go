package vm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cocoon-runtime/cocoon/agentclient"
)

// BootProbe creates and starts a VM from spec with d, waits for the agent's
// health check within timeout, and always stops the VM (Stop removes its run
// dir). It returns how long the boot took, from create to a healthy agent.
// A VMM that exits before the agent answers is an error wrapping
// ErrNotRunning; running out of time wraps context.DeadlineExceeded.
func BootProbe(ctx context.Context, d Driver, spec *Spec, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	v, err := d.Create(ctx, spec)
	if err != nil {
		return 0, err
	}
	defer func() { _ = v.Stop(context.Background()) }()
	if err := v.Start(ctx); err != nil {
		return 0, err
	}
	// Stop waiting as soon as the VMM dies: the agent will never answer.
	waitCtx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	go func() {
		select {
		case <-v.Done():
			stopWaiting()
		case <-waitCtx.Done():
		}
	}()
	client, err := agentclient.Wait(waitCtx, v.DialAgent)
	if err != nil {
		select {
		case <-v.Done():
			return 0, fmt.Errorf("%w before the agent answered", exitError(v.Err()))
		default:
			return 0, err
		}
	}
	client.Close()
	return time.Since(start), nil
}

// exitError makes sure a dead VMM's error wraps ErrNotRunning.
func exitError(err error) error {
	if errors.Is(err, ErrNotRunning) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrNotRunning, err)
}
