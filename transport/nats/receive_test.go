package nats

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestReceiveBatch: Receive hands out what is waiting in batches, up to
// max (the first message's pending count decides whether to ask for more),
// in order, and one message when only one is waiting. The contract lets a
// Receive return fewer than are waiting (the server's pending count can
// lag on a loaded machine), so the test asserts batching, not one call.
func TestReceiveBatch(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "batch.h", Pattern: "batch.checked", Lease: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	publish := func(n int, from int) {
		t.Helper()
		msgs := make([]*transport.Message, n)
		for i := range msgs {
			msgs[i] = &transport.Message{ID: fmt.Sprintf("b-%d", from+i), Type: "batch.checked", Time: time.Now(), Attrs: map[string]string{"source": "s"}}
		}
		if err := d.Publish(bg, msgs); err != nil {
			t.Fatal(err)
		}
	}
	receive := func(max int) []*transport.Delivery {
		t.Helper()
		ctx, cancel := context.WithTimeout(bg, 30*time.Second)
		defer cancel()
		ds, err := s.Receive(ctx, max)
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		var ss []transport.Settlement
		for _, d := range ds {
			ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
		}
		if err := s.Settle(bg, ss); err != nil {
			t.Fatalf("Settle: %v", err)
		}
		return ds
	}

	// drain receives until the ids from..to-1 have come, in order, each
	// call handing out at most max, and returns how many calls it took.
	drain := func(from, to, max int) int {
		t.Helper()
		calls, next := 0, from
		for next < to {
			ds := receive(max)
			calls++
			if len(ds) > max {
				t.Fatalf("Receive(%d) handed out %d", max, len(ds))
			}
			for _, d := range ds {
				if want := fmt.Sprintf("b-%d", next); d.ID != want {
					t.Fatalf("delivery %s, want %s (in publish order, none missing)", d.ID, want)
				}
				next++
			}
		}
		return calls
	}

	publish(5, 0)
	if calls := drain(0, 5, 10); calls >= 5 {
		t.Errorf("5 waiting events took %d Receive(10) calls; want batches, fewer calls than events", calls)
	}
	publish(4, 5)
	if calls := drain(5, 9, 3); calls < 2 {
		t.Errorf("4 waiting events came in %d Receive(3) call; want at least two", calls)
	}
}
