package ripple

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// WaitIdle blocks until every handler registered on this bus is idle, or
// ctx ends (returning ctx's error). It is meant for scripts, tests and
// one-shot jobs: publish, then wait for the handlers to finish.
//
// A handler is idle when the transport reports nothing waiting, active
// (leased, in this or any other process) or delayed (a WithDelay or
// WithDeliverAt event, or a retry waiting for its backoff) for it, and
// this bus has no delivery of it still being handled or settled, its
// hooks included. Dead letters do not count: they are finished. Events a
// handler publishes before returning are counted before the handler's own
// event is finished, so a chain of handlers is waited for to its end. A
// paused handler (see Stats' Paused) is idle once it has nothing active.
// Idle must be seen twice in a row, a poll apart.
//
// WaitIdle waits for delayed events however far off they are, so bound
// it with ctx. Events published meanwhile, by this process or by others
// sharing the transport, keep it waiting until they are handled too; on a
// transport shared with busy producers it may not return before ctx ends.
// Handlers registered on other buses are not waited for.
//
// It needs a started bus and a transport that keeps statistics (every
// transport Ripple ships); otherwise it returns an error at once.
func (b *Bus) WaitIdle(ctx context.Context) error {
	if ctx == nil {
		return invalidOption("WaitIdle(nil ctx); pass a context, bounded with a timeout")
	}
	poll := 5 * time.Millisecond
	idleSeen := 0
	for {
		idle, err := b.idle(ctx)
		if err != nil {
			return err
		}
		if idle {
			idleSeen++
			if idleSeen == 2 {
				return nil
			}
		} else {
			idleSeen = 0
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		poll = min(poll*2, 100*time.Millisecond)
	}
}

// idle reports whether every handler of the bus is idle now (see
// WaitIdle).
func (b *Bus) idle(ctx context.Context) (bool, error) {
	b.mu.Lock()
	started, stopping := b.started, b.stopping
	runners := make([]*runner, 0, len(b.order))
	for _, name := range b.order {
		runners = append(runners, b.handlers[name])
	}
	b.mu.Unlock()
	switch {
	case b.isClosed() || stopping:
		return false, fmt.Errorf("ripple: WaitIdle: %w", ErrClosed)
	case len(runners) == 0:
		return true, nil
	case !started:
		return false, errors.New("ripple: WaitIdle before Start: no handler runs yet, so none would become idle; call Start (or Run) first")
	}
	// The transport's counts come first, then this bus's own: a delivery
	// the transport shows finished may still be running its hooks here.
	stats, err := b.Stats(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, fmt.Errorf("ripple: WaitIdle: %w", err)
	}
	byName := make(map[string]HandlerStats, len(stats))
	for _, s := range stats {
		byName[s.Handler] = s
	}
	for _, r := range runners {
		s := byName[r.name]
		if s.Active > 0 || !s.Paused && s.Waiting+s.Delayed > 0 {
			return false, nil
		}
	}
	for _, r := range runners {
		if r.busy.Load() > 0 {
			return false, nil
		}
	}
	return true, nil
}
