package ripple_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
)

// gatedSettle holds every Settle call at a gate while it is closed, and
// records the size of each call and the outcomes recorded.
type gatedSettle struct {
	transport.Driver
	mu       sync.Mutex
	open     chan struct{} // closed when the gate opens
	calls    []int         // settlements per Settle call, in call order
	outcomes map[string]transport.Outcome
}

func newGatedSettle() *gatedSettle {
	return &gatedSettle{Driver: memory.New(transport.Retention{}), open: make(chan struct{}), outcomes: map[string]transport.Outcome{}}
}

func (d *gatedSettle) openGate() { close(d.open) }

func (d *gatedSettle) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	sub, err := d.Driver.Subscribe(ctx, s)
	return &gatedSub{Subscription: sub, d: d}, err
}

// Stats passes through, for Stats and WaitIdle.
func (d *gatedSettle) Stats(ctx context.Context) ([]transport.Stats, error) {
	return d.Driver.(transport.Inspector).Stats(ctx)
}

func (d *gatedSettle) callSizes() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]int(nil), d.calls...)
}

func (d *gatedSettle) outcome(id string) transport.Outcome {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.outcomes[id]
}

type gatedSub struct {
	transport.Subscription
	d *gatedSettle
}

func (s *gatedSub) Settle(ctx context.Context, ss []transport.Settlement) error {
	s.d.mu.Lock()
	s.d.calls = append(s.d.calls, len(ss))
	s.d.mu.Unlock()
	select {
	case <-s.d.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	err := s.Subscription.Settle(ctx, ss)
	if err == nil {
		s.d.mu.Lock()
		for _, x := range ss {
			s.d.outcomes[x.Delivery.ID] = x.Outcome
		}
		s.d.mu.Unlock()
	}
	return err
}

// eventually polls cond every few milliseconds for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSettleOffTheHandlersPathAndBounded checks that a handler goes on to
// its next event while the previous outcome is being recorded, that what
// piles up while a Settle call runs goes in one call, and that a store that
// does not answer stops the handler after a bounded number of unrecorded
// outcomes instead of leasing on.
func TestSettleOffTheHandlersPathAndBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newGatedSettle()
	bus, err := ripple.New(d)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var handled atomic.Int64
	if err := bus.On("a.b", "h", func(context.Context, ripple.Event) error {
		handled.Add(1)
		return nil
	}, ripple.Concurrency(1)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 100
	for i := range n {
		if _, err := bus.Publish(ctx, "a.b", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	// With every Settle held, one handler at a time still gets through
	// several events: their outcomes wait in the queue.
	eventually(t, "a second event handled while the first outcome is unrecorded", func() bool { return handled.Load() >= 2 })
	// And then it stops: Concurrency(1) plus the queue's 16.
	eventually(t, "the handler to stop at the queue's bound", func() bool { return handled.Load() >= 17 })
	time.Sleep(200 * time.Millisecond)
	if got := handled.Load(); got != 17 {
		t.Fatalf("handled %d events while no outcome could be recorded; want 17 (Concurrency(1) plus a queue of 16)", got)
	}
	st := handlerStats(t, bus, "h")
	if st.Active > 17 || st.Completed != 0 {
		t.Fatalf("with the store not recording: %+v; want at most 17 leased and none completed", st)
	}
	d.openGate()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := bus.WaitIdle(wctx); err != nil {
		t.Fatal(err)
	}
	if got := handled.Load(); got != n {
		t.Errorf("handled %d of %d", got, n)
	}
	sizes := d.callSizes()
	// While the gate was closed the queue's 16 outcomes (the 17th handled
	// event waited for room, holding its slot) were sent in two calls: the
	// one held at the gate, with what was queued when it began, and the
	// next, with everything queued meanwhile. One of them carries at least
	// half.
	if len(sizes) < 2 || sizes[0]+sizes[1] < 16 || max(sizes[0], sizes[1]) < 8 {
		t.Errorf("Settle call sizes %v: want the 16 outcomes queued while the store was held in the first two calls", sizes)
	}
	total := 0
	for _, s := range sizes {
		total += s
	}
	if total != n {
		t.Errorf("settled %d outcomes in %d calls, want %d", total, len(sizes), n)
	}
	if st := handlerStats(t, bus, "h"); st.Completed != n {
		t.Errorf("completed %d, want %d", st.Completed, n)
	}
}

// TestOrderedHandlerHoldsSlotUntilRecorded checks that an Ordered handler's
// slot stays taken until its outcome is recorded.
func TestOrderedHandlerHoldsSlotUntilRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newGatedSettle()
	bus, err := ripple.New(d)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var handled atomic.Int64
	if err := bus.On("a.b", "h", func(context.Context, ripple.Event) error {
		handled.Add(1)
		return nil
	}, ripple.Concurrency(1), ripple.Ordered()); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"k1", "k2", "k3"} {
		if _, err := bus.Publish(ctx, "a.b", map[string]string{"k": key}, ripple.WithKey(key)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the first event handled", func() bool { return handled.Load() >= 1 })
	time.Sleep(200 * time.Millisecond)
	if got := handled.Load(); got != 1 {
		t.Fatalf("an Ordered Concurrency(1) handler ran %d events while its first outcome was unrecorded; want 1", got)
	}
	d.openGate()
	eventually(t, "every event handled", func() bool { return handled.Load() == 3 })
}

// TestShutdownRecordsQueuedOutcomes checks that a shutdown that cuts off a
// running handler records, rather than hands back, the queued outcome of an
// event already handled, and that the hooks hear of it only once it is
// recorded.
func TestShutdownRecordsQueuedOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newGatedSettle()
	hook := &outcomeHook{}
	bus, err := ripple.New(d, ripple.WithHooks(hook))
	if err != nil {
		t.Fatal(err)
	}
	slowStarted := make(chan struct{})
	if err := bus.On("a.b", "h", func(ctx context.Context, e ripple.Event) error {
		var p struct{ Slow bool }
		if err := e.Decode(&p); err != nil {
			return ripple.Permanent(err)
		}
		if p.Slow {
			close(slowStarted)
			<-ctx.Done() // cut off by the shutdown
		}
		return nil
	}, ripple.Concurrency(2)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	slow, err := bus.Publish(ctx, "a.b", map[string]bool{"Slow": true})
	if err != nil {
		t.Fatal(err)
	}
	<-slowStarted
	quick, err := bus.Publish(ctx, "a.b", map[string]bool{"Slow": false})
	if err != nil {
		t.Fatal(err)
	}
	// The quick event's outcome is queued, its Settle held at the gate.
	eventually(t, "the quick event's outcome sent", func() bool { return len(d.callSizes()) >= 1 })
	if got := hook.all(); len(got) != 0 {
		t.Fatalf("hooks heard %v before the store recorded anything", got)
	}
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := bus.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want a deadline error (the slow handler was cut off)", err)
	}
	d.openGate()
	select {
	case <-bus.Stopped():
	case <-time.After(20 * time.Second):
		t.Fatal("the bus did not stop once the store answered")
	}
	if got := d.outcome(quick.ID); got != transport.Complete {
		t.Errorf("the handled event's queued outcome was recorded as %v, want complete", got)
	}
	if got := d.outcome(slow.ID); got != transport.Release {
		t.Errorf("the cut-off event was recorded as %v, want release", got)
	}
	if got := hook.all(); len(got) != 1 || got[0] != ripple.OutcomeSuccess {
		t.Errorf("hooks heard %v, want the one recorded success", got)
	}
}

func handlerStats(t *testing.T, bus *ripple.Bus, name string) ripple.HandlerStats {
	t.Helper()
	stats, err := bus.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stats {
		if s.Handler == name {
			return s
		}
	}
	t.Fatalf("no stats for %s in %+v", name, stats)
	return ripple.HandlerStats{}
}
