package sqlite

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// consume receives and completes deliveries of sub until ctx ends,
// counting the completed ones.
func consume(ctx context.Context, t *testing.T, sub transport.Subscription, done *sync.WaitGroup, count func(int)) {
	defer done.Done()
	for {
		ds, err := sub.Receive(ctx, 10)
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("Receive: %v", err)
			}
			return
		}
		ss := make([]transport.Settlement, len(ds))
		for i, d := range ds {
			ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Complete}
		}
		if err := sub.Settle(context.Background(), ss); err != nil {
			t.Errorf("Settle: %v", err)
			return
		}
		count(len(ds))
	}
}

// TestBookkeepingJoinsPublishes: with one publisher publishing back to
// back and a handler taking and completing the events, the handler's
// leases and settlements ride in the publishes' transactions instead of
// committing between them, and every event is still completed once.
func TestBookkeepingJoinsPublishes(t *testing.T) {
	d, _ := newDB(t)
	ctx := context.Background()
	sub, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "sched.>"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu      sync.Mutex
		handled int
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go consume(rctx, t, sub, &wg, func(n int) { mu.Lock(); handled += n; mu.Unlock() })

	const n = 1000
	for range n {
		if err := d.Publish(ctx, []*transport.Message{msg("sched.event")}); err != nil {
			t.Fatal(err)
		}
	}
	// The publisher has stopped: what is parked commits on its own.
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		h := handled
		mu.Unlock()
		if h == n {
			break
		}
		if h > n || time.Now().After(deadline) {
			t.Fatalf("handled %d of %d events", h, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	wg.Wait()
	if st := statsOf(t, d, "h"); st.Completed != n || st.Waiting != 0 || st.Active != 0 {
		t.Fatalf("stats %+v, want %d completed and nothing waiting or active", st, n)
	}
	w := d.w
	if w.parks.Load() == 0 || w.joined.Load() == 0 {
		t.Fatalf("parked %d, joined %d: the handler's bookkeeping never waited for a publish's transaction", w.parks.Load(), w.joined.Load())
	}
	// Fewer transactions than operations: bookkeeping shared commits.
	if b, ops := w.batches.Load(), w.batched.Load(); b >= ops {
		t.Fatalf("%d transactions for %d operations", b, ops)
	}
}

// TestParkedCommitsWithoutPublish: bookkeeping parked for a publish that
// never comes commits on its own, and a parked operation still commits
// when the driver closes.
func TestParkedCommitsWithoutPublish(t *testing.T) {
	d, _ := newDB(t)
	ctx := context.Background()
	sub, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "sched.>"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := d.Publish(ctx, []*transport.Message{msg("sched.event")}); err != nil {
		t.Fatal(err)
	}
	// A durable operation that stays pending: a publisher at work.
	d.w.durableStart()
	d.w.gapAvg.Store(0) // back to back
	ended := false
	defer func() {
		if !ended {
			d.w.durableEnd()
		}
	}()
	parks := d.w.parks.Load()
	got, err := sub.Receive(ctx, 10)
	if err != nil || len(got) != 1 {
		t.Fatalf("Receive = %d deliveries, %v; want the published event", len(got), err)
	}
	if d.w.parks.Load() == parks {
		t.Fatal("the lease was not parked while a durable operation was pending")
	}
	if err := sub.Settle(ctx, []transport.Settlement{{Delivery: got[0], Outcome: transport.Complete}}); err != nil {
		t.Fatal(err)
	}
	if st := statsOf(t, d, "h"); st.Completed != 1 {
		t.Fatalf("stats %+v, want the event completed", st)
	}

	// Close with an operation parked: it is answered, not lost.
	if err := d.Publish(ctx, []*transport.Message{msg("sched.event")}); err != nil {
		t.Fatal(err)
	}
	parks = d.w.parks.Load()
	res := make(chan error, 1)
	go func() {
		ds, err := sub.Receive(ctx, 10)
		if err == nil && len(ds) != 1 {
			err = errors.New("no delivery")
		}
		res <- err
	}()
	deadline := time.Now().Add(time.Minute)
	for d.w.parks.Load() == parks && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d.w.durableEnd()
	ended = true
	select {
	case err := <-res:
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Fatalf("Receive across Close: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a Receive parked at Close never returned")
	}
}
