package ripple

import (
	"context"
	"errors"
	"fmt"
)

// Middleware wraps a handler: it returns a HandlerFunc that runs around
// next, with the attempt's ctx and event, and usually calls next. Use it
// for what every handler needs, such as logging, tracing spans, putting a
// tenant or a logger in ctx, or reporting panics to an error tracker:
//
//	func logAttempts(next ripple.HandlerFunc) ripple.HandlerFunc {
//		return func(ctx context.Context, e ripple.Event) error {
//			err := next(ctx, e)
//			slog.InfoContext(ctx, "handled", "handler", e.Handler, "event", e.ID, "attempt", e.Attempt, "err", err)
//			return err
//		}
//	}
//
// What a middleware returns is the attempt's result, as a handler's is: it
// may change next's error (for example wrap it with Permanent), or return
// an error without calling next. A middleware that panics is handled like
// a panicking handler: the attempt fails and is retried. Hooks (WithHooks)
// remain the place for metrics: they see every attempt's outcome, also of
// attempts that never reach the handler.
type Middleware func(next HandlerFunc) HandlerFunc

// Use adds middleware that wraps every handler of this bus, those
// registered before the call and after it. It must be called before Start
// (or Run), since running handlers are not rewrapped: later it returns an
// error and adds nothing.
//
// Order: bus middleware runs outermost, in the order given to Use (over
// all calls), then the handler's own WithMiddleware in the order given,
// then the handler. Use(a, b) with WithMiddleware(c) runs a, which calls
// b, which calls c, which calls the handler; the results return the other
// way.
func (b *Bus) Use(mw ...Middleware) error {
	for i, m := range mw {
		if m == nil {
			return invalidOption("Use: middleware %d of %d is nil", i+1, len(mw))
		}
	}
	b.lifecycle.Lock()
	defer b.lifecycle.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.stopping:
		return ErrClosed
	case b.started:
		return errors.New("ripple: Use after Start: handlers already running would not be wrapped; call Use before Start, or give a handler registered later its own WithMiddleware")
	}
	b.middleware = append(b.middleware, mw...)
	return nil
}

// WithMiddleware adds middleware that wraps this handler only, inside the
// bus's middleware (see Bus.Use for the order).
func WithMiddleware(mw ...Middleware) HandlerOption {
	return func(c *handlerConfig) error {
		for i, m := range mw {
			if m == nil {
				return invalidOption("WithMiddleware: middleware %d of %d is nil", i+1, len(mw))
			}
		}
		c.middleware = append(c.middleware, mw...)
		return nil
	}
}

// chain wraps fn in the bus's middleware and then the handler's own, the
// first given outermost.
func chain(fn HandlerFunc, bus, own []Middleware) HandlerFunc {
	all := make([]Middleware, 0, len(bus)+len(own))
	all = append(append(all, bus...), own...)
	for i := len(all) - 1; i >= 0; i-- {
		next := all[i](fn)
		if next == nil {
			n := i + 1
			next = func(context.Context, Event) error {
				return fmt.Errorf("ripple: middleware %d of %d returned a nil HandlerFunc; it must return a func that calls next", n, len(all))
			}
		}
		fn = next
	}
	return fn
}
