package ripple

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestHandlerCtxDerived checks what libraries rely on when they derive a
// context from a handler's: the child ends with the parent, with the same
// error, reports the parent's deadline, and still carries the event.
func TestHandlerCtxDerived(t *testing.T) {
	ev := &Event{ID: "e1"}
	deadline := time.Now().Add(time.Hour)
	c := &handlerCtx{ev: ev, deadline: deadline}
	child, cancelChild := context.WithCancel(c)
	defer cancelChild()
	valued := context.WithValue(child, struct{ k int }{1}, "v")
	if d, ok := valued.Deadline(); !ok || !d.Equal(deadline) {
		t.Fatalf("derived Deadline() = %v, %v; want %v", d, ok, deadline)
	}
	if got, ok := EventFromContext(valued); !ok || got.ID != "e1" {
		t.Fatalf("EventFromContext(derived) = %+v, %v", got, ok)
	}
	ran := make(chan struct{})
	context.AfterFunc(c, func() { close(ran) })
	stopped := context.AfterFunc(c, func() { t.Error("a stopped AfterFunc ran") })
	if !stopped() {
		t.Fatal("stop of a pending AfterFunc returned false")
	}
	c.cancel(context.DeadlineExceeded)
	c.cancel(context.Canceled) // a second cancel changes nothing
	select {
	case <-child.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("a context derived from a handler's ctx did not end with it")
	}
	if !errors.Is(child.Err(), context.DeadlineExceeded) || !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("after the deadline: ctx.Err() = %v, derived Err() = %v; want context.DeadlineExceeded", c.Err(), child.Err())
	}
	select {
	case <-ran:
	case <-time.After(2 * time.Second):
		t.Fatal("context.AfterFunc on a handler's ctx did not run")
	}
	// A context derived after the end is done at once.
	late, cancelLate := context.WithTimeout(c, time.Hour)
	defer cancelLate()
	select {
	case <-late.Done():
	default:
		t.Fatal("a context derived from an ended handler ctx is not done")
	}
}

// TestHandlerTimeoutEnforced checks a handler's deadline through the bus:
// its ctx reports the exact deadline and ends within a watch tick of it.
func TestHandlerTimeoutEnforced(t *testing.T) {
	const timeout = 200 * time.Millisecond
	if tick := watchTick(timeout); tick != 10*time.Millisecond {
		t.Fatalf("watchTick(%s) = %s, want a twentieth", timeout, tick)
	}
	if tick := watchTick(time.Hour); tick != time.Second {
		t.Fatalf("watchTick(1h) = %s, want the 1 s cap", tick)
	}
	ctx := context.Background()
	bus, err := Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	type obs struct {
		start, deadline, end time.Time
		err                  error
	}
	got := make(chan obs, 1)
	if err := bus.On("t.slow", "slow", func(ctx context.Context, e Event) error {
		o := obs{start: time.Now()}
		o.deadline, _ = ctx.Deadline()
		<-ctx.Done()
		o.end, o.err = time.Now(), ctx.Err()
		select {
		case got <- o:
		default:
		}
		return Permanent(ctx.Err())
	}, Timeout(timeout)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "t.slow", map[string]int{}); err != nil {
		t.Fatal(err)
	}
	o := <-got
	if d := o.deadline.Sub(o.start); d < timeout-5*time.Millisecond || d > timeout {
		t.Errorf("ctx.Deadline() is %s after the handler started, want %s", d, timeout)
	}
	if !errors.Is(o.err, context.DeadlineExceeded) {
		t.Errorf("ctx.Err() = %v, want context.DeadlineExceeded", o.err)
	}
	if late := o.end.Sub(o.deadline); late < 0 || late > timeout {
		t.Errorf("ctx ended %s after its deadline; want within a watch tick (%s) plus scheduling", late, watchTick(timeout))
	}
}

// TestWorkersExitOnClose checks that the goroutines reused across
// deliveries end with the bus.
func TestWorkersExitOnClose(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx := context.Background()
	bus, err := Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	if err := bus.On("t.work", "work", func(ctx context.Context, e Event) error {
		handled.Add(1)
		return nil
	}, Concurrency(8)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if _, err := bus.Publish(ctx, "t.work", map[string]int{}); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); handled.Load() < 200; {
		if time.Now().After(deadline) {
			t.Fatalf("handled %d of 200", handled.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Outcomes are recorded after the handlers return, and goroutines of
	// earlier tests may still be ending on a loaded machine: wait for the
	// count to settle rather than reading it once.
	for deadline := time.Now().Add(5 * time.Second); ; {
		n := runtime.NumGoroutine()
		if n <= before+8+10 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines while idle with Concurrency(8), %d before Open: workers are not reused", n, before)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before Open", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
