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
