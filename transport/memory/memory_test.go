package memory_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
)

// A named store lives while a driver has it open, and is freed when the
// last one closes, so that a long-running process opening many names
// does not keep them all.
func TestNamedStoreLifetime(t *testing.T) {
	ctx := context.Background()
	url := "memory://lifetime-test"
	open := func() transport.Driver {
		t.Helper()
		d, err := memory.Open(ctx, url, transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	subscribe := func(d transport.Driver) {
		t.Helper()
		if _, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Lease: 1e9, MaxAttempts: 1}); err != nil {
			t.Fatal(err)
		}
	}
	handlers := func(d transport.Driver) int {
		t.Helper()
		st, err := d.(transport.Inspector).Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(st)
	}

	a := open()
	subscribe(a)
	b := open()
	if n := handlers(b); n != 1 {
		t.Fatalf("a second driver on %s sees %d handlers, want the first driver's 1", url, n)
	}
	_ = a.Close()
	if n := handlers(b); n != 1 {
		t.Fatalf("after one of two drivers closed, the store has %d handlers, want 1", n)
	}
	_ = b.Close()
	c := open()
	defer c.Close()
	if n := handlers(c); n != 0 {
		t.Errorf("after every driver closed, reopening %s found %d handlers, want a fresh store", url, n)
	}
}

// TestUnsubscribeWhileAnotherDriverHoldsLeases unsubscribes a handler
// from one driver while another driver on the same store holds leased
// deliveries of it: the holder's Extend and Settle must skip them, not
// reach into the emptied subscription.
func TestUnsubscribeWhileAnotherDriverHoldsLeases(t *testing.T) {
	ctx := context.Background()
	url := "memory://unsubscribe-while-leased"
	a, err := memory.Open(ctx, url, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := memory.Open(ctx, url, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s, err := a.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Lease: time.Minute, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	var ms []*transport.Message
	for i := range 3 {
		ms = append(ms, &transport.Message{ID: fmt.Sprintf("e%d", i), Type: "a.b", Time: time.Now(), Data: []byte(`{}`)})
	}
	if err := a.Publish(ctx, ms); err != nil {
		t.Fatal(err)
	}
	ds, err := s.Receive(ctx, 3)
	if err != nil || len(ds) != 3 {
		t.Fatalf("Receive = %d, %v", len(ds), err)
	}
	if err := b.(transport.Unsubscriber).Unsubscribe(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if err := s.Extend(ctx, ds, time.Minute); err != nil {
		t.Fatal(err)
	}
	ss := make([]transport.Settlement, len(ds))
	for i, d := range ds {
		ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Complete}
	}
	if err := s.Settle(ctx, ss); err != nil {
		t.Fatal(err)
	}
}

// A shared rate limit's memory follows the starts it must remember, not
// n, and it still holds n per period.
func TestRateLimitMemoryFollowsUse(t *testing.T) {
	d := memory.New(transport.Retention{})
	defer d.Close()
	rl := d.(transport.RateLimiter)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, err := rl.Reserve(context.Background(), "h", 1<<20, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Errorf("Reserve with n=1<<20 allocated %d bytes for 100 starts, want it to grow with use", grew)
	}
	for i := range 4 {
		wait, err := rl.Reserve(context.Background(), "small", 3, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if got := wait > 30*time.Minute; got != (i == 3) {
			t.Errorf("start %d of RateLimit(3, 1h) waits %s", i+1, wait)
		}
	}
}

// The routes a store caches per event type follow subscriptions as they
// come and go, and a delivery's data is its own, as are the priorities of
// a ready queue that empties and fills again.
func TestRoutesFollowSubscriptions(t *testing.T) {
	ctx := context.Background()
	d := memory.New(transport.Retention{})
	defer d.Close()
	spec := func(name, pattern string) transport.SubscriptionSpec {
		return transport.SubscriptionSpec{Name: name, Pattern: pattern, Lease: time.Minute, MaxAttempts: 1}
	}
	publish := func(id string, prio int) {
		t.Helper()
		m := &transport.Message{ID: id, Type: "a.b", Priority: prio, Time: time.Now(), Attrs: map[string]string{"source": "test"}, Data: []byte(id)}
		if err := d.Publish(ctx, []*transport.Message{m}); err != nil {
			t.Fatal(err)
		}
	}
	receive := func(s transport.Subscription, max int) []*transport.Delivery {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		ds, err := s.Receive(rctx, max)
		if err != nil && rctx.Err() == nil {
			t.Fatal(err)
		}
		return ds
	}
	ids := func(ds []*transport.Delivery) string {
		var out string
		for _, x := range ds {
			out += x.ID + " "
		}
		return out
	}

	one, err := d.Subscribe(ctx, spec("one", "a.*"))
	if err != nil {
		t.Fatal(err)
	}
	publish("e1", 0) // the route of a.b is cached with one handler
	two, err := d.Subscribe(ctx, spec("two", "a.>"))
	if err != nil {
		t.Fatal(err)
	}
	publish("e2", 0)
	if got := ids(receive(one, 10)); got != "e1 e2 " {
		t.Errorf("handler one received %q, want e1 e2", got)
	}
	ds := receive(two, 10)
	if got := ids(ds); got != "e2 " {
		t.Fatalf("handler two, subscribed after e1, received %q, want e2", got)
	}
	ds[0].Data[0] = 'X' // a handler writing to its data
	if err := two.Settle(ctx, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Release}}); err != nil {
		t.Fatal(err)
	}
	if got := receive(two, 10); len(got) != 1 || string(got[0].Data) != "e2" {
		t.Fatalf("redelivery after a handler wrote to its data: %v", got)
	}

	if err := d.(transport.Unsubscriber).Unsubscribe(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	// Priorities, after the ready queue emptied: higher first, each
	// priority in publish order.
	publish("p0", 0)
	publish("p5", 5)
	publish("p1", 1)
	publish("p5b", 5)
	if got := ids(receive(two, 10)); got != "p5 p5b p1 p0 " {
		t.Errorf("handler two received %q, want p5 p5b p1 p0", got)
	}
	publish("q1", 1)
	publish("q0", 0)
	if got := ids(receive(two, 10)); got != "q1 q0 " {
		t.Errorf("after the queue emptied, handler two received %q, want q1 q0", got)
	}
}
