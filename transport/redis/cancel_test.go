package redis

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestCancelledReceiveStrandsNothing cancels blocked Receive calls at
// random moments around a publish: entries a cancelled read brought are
// returned or handed back, never left pending until their lease ends.
func TestCancelledReceiveStrandsNothing(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "x.y", time.Minute)
	receiveNone(t, s, 300*time.Millisecond) // past the first poll, into blocking reads
	for range 500 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan []*transport.Delivery, 1)
		go func() {
			ds, _ := s.Receive(ctx, 1)
			done <- ds
		}()
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		go func() { _ = d.Publish(context.Background(), []*transport.Message{msg("x.y")}) }()
		time.Sleep(time.Duration(rand.IntN(400)) * time.Microsecond)
		cancel()
		if ds := <-done; len(ds) > 0 {
			settle(t, s, transport.Complete, 0, ds...)
		}
	}
	// Close hands back what the last reads left read ahead.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.acks.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p, err := rawClient(t, d).XPending(context.Background(), d.streamKey("h"), "h").Result()
	if err != nil {
		t.Fatal(err)
	}
	if p.Count != 0 {
		t.Errorf("%d entries left pending after cancelled Receive calls; they would return only after their 1-minute lease, with an attempt used", p.Count)
	}
}
