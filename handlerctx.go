package ripple

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// handlerCtx is the context a handler runs under. Its deadline is
// enforced by the runner's watch loop instead of a timer of its own: a
// timer per delivery (context.WithTimeout) and a watchdog registered on
// it were a sizable share of the core's cost per event. Done closes within
// one watch tick of the deadline (a twentieth of Timeout, at most a
// second); Deadline reports the exact time, so libraries that set their
// own timers from it are exact.
type handlerCtx struct {
	// d is the delivery being handled and handler the handler's name:
	// the event the ctx carries (EventFromContext) is built from them
	// when first asked for, into ev, since most handlers never ask.
	d        *transport.Delivery
	handler  string
	deadline time.Time
	// values is the ctx given to Start or Run: a handler's ctx carries its
	// values, so that loggers, tenants and tracing providers put there
	// reach handlers. Its cancellation does not reach them.
	values context.Context

	mu     sync.Mutex
	done   chan struct{} // made on the first Done, or closed at cancel
	err    error
	afters []*afterFunc
	ev     *Event // the event, once built
}

// handlerCtxKey is the key under which a handler's ctx gives itself, so
// that a publish from a handler reads the few attributes it passes on
// without building the whole event.
type handlerCtxKey struct{}

type afterFunc struct{ f func() }

// closedChan is the Done channel of a context cancelled before anyone
// asked for its channel.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func (c *handlerCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *handlerCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.err != nil {
			c.done = closedChan
		} else {
			c.done = make(chan struct{})
		}
	}
	return c.done
}

func (c *handlerCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *handlerCtx) Value(key any) any {
	switch key {
	case any(eventKey{}):
		return c.event()
	case any(handlerCtxKey{}):
		return c
	}
	if c.values != nil {
		return c.values.Value(key)
	}
	return nil
}

// event returns the event being handled, built on the first call.
func (c *handlerCtx) event() *Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ev == nil {
		ev := handlerEvent(c.d, c.handler)
		c.ev = &ev
	}
	return c.ev
}

// parent returns what a publish from the handler takes from the event
// being handled: its id, correlation id and trace context.
func (c *handlerCtx) parent() (id, correlationID, traceParent string) {
	c.mu.Lock()
	ev := c.ev
	c.mu.Unlock()
	if ev != nil {
		return ev.ID, ev.CorrelationID, ev.TraceParent
	}
	return c.d.ID, c.d.Attrs[attrCorrelationID], c.d.Attrs[attrTraceParent]
}

// handlerEvent is the event a handler named handler gets for d.
func handlerEvent(d *transport.Delivery, handler string) Event {
	var ev Event
	ev.setFromMessage(&d.Message)
	ev.Attempt = d.Attempt
	ev.Handler = handler
	return ev
}

func (c *handlerCtx) String() string { return "ripple.handlerContext" }

// cancel ends the context with err; later calls do nothing.
func (c *handlerCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done == nil {
		c.done = closedChan
	} else {
		close(c.done)
	}
	afters := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, a := range afters {
		go a.f()
	}
}

// AfterFunc arranges for f to run in its own goroutine once the context
// ends. The context package uses it so that a context derived from a
// handler's ctx follows its cancellation without a goroutine of its own.
func (c *handlerCtx) AfterFunc(f func()) (stop func() bool) {
	a := &afterFunc{f: f}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	c.afters = append(c.afters, a)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.afters {
			if x == a {
				c.afters = append(c.afters[:i], c.afters[i+1:]...)
				return true
			}
		}
		return false
	}
}

// A flight is one running handler attempt.
type flight struct {
	d *transport.Delivery
	// ctx is the handler's ctx, in the flight's allocation. The attempt
	// started Timeout before its deadline (see start). The handler's event
	// lives on the handling goroutine's stack.
	ctx handlerCtx
	// state: 0 running, 1 returned, 2 abandoned. Whoever moves it from 0
	// settles the attempt and frees the slot.
	state atomic.Int32
}

// start is when the attempt started: its deadline less the timeout.
func (f *flight) start(timeout time.Duration) time.Time {
	return f.ctx.deadline.Add(-timeout)
}

// watchTick is how often the watch loop looks for overdue handlers.
func watchTick(timeout time.Duration) time.Duration {
	return min(max(timeout/20, time.Millisecond), time.Second)
}

// watch cancels the contexts of handlers past their deadline and abandons
// those still running abandonGrace later, until runCtx ends.
func (r *runner) watch() {
	t := time.NewTicker(watchTick(r.cfg.timeout))
	defer t.Stop()
	var overdue []*flight
	for {
		select {
		case <-t.C:
		case <-r.runCtx.Done():
			return
		}
		now := time.Now()
		overdue = overdue[:0]
		r.mu.Lock()
		for _, f := range r.inflight {
			if f != nil && now.After(f.ctx.deadline) {
				overdue = append(overdue, f)
			}
		}
		r.mu.Unlock()
		for _, f := range overdue {
			f.ctx.cancel(context.DeadlineExceeded)
			if now.After(f.ctx.deadline.Add(abandonGrace)) {
				r.abandon(f)
			}
		}
	}
}

// abandon gives up on a handler that ignored its cancelled context: its
// attempt counts as failed and its slot is freed. The handler's goroutine
// runs on until the handler returns.
func (r *runner) abandon(f *flight) {
	if !f.state.CompareAndSwap(0, 2) {
		return
	}
	if !r.isAborted() {
		r.bus.log.Error("ripple: handler ignored its cancelled context and was abandoned; its slot is freed and the attempt counts as failed",
			"handler", r.name, "event", f.d.ID, "timeout", r.cfg.timeout)
	}
	err := fmt.Errorf("handler did not return within %s of its %s timeout", abandonGrace, r.cfg.timeout)
	ev := handlerEvent(f.d, r.name)
	r.finish(f.d, &ev, err, true, time.Since(f.start(r.cfg.timeout)))
}
