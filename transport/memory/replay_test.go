package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
)

// TestReplayDeadLetterOutsideHistory checks that a dead letter kept longer
// than the publish history (DedupWindow bounds it, DeadAge the dead
// letters) is replayed and leaves the queue, and that its failed attempt
// stays counted.
func TestReplayDeadLetterOutsideHistory(t *testing.T) {
	ctx := context.Background()
	d := memory.New(transport.Retention{DedupWindow: 50 * time.Millisecond})
	defer d.Close()
	s, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Lease: time.Minute, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	pub := func(id string) {
		if err := d.Publish(ctx, []*transport.Message{{ID: id, Type: "a.b", Time: time.Now(), Data: []byte(`{}`)}}); err != nil {
			t.Fatal(err)
		}
	}
	settleNext := func(o transport.Outcome) {
		ds, err := s.Receive(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Settle(ctx, []transport.Settlement{{Delivery: ds[0], Outcome: o, Error: "boom"}}); err != nil {
			t.Fatal(err)
		}
	}
	pub("e1")
	settleNext(transport.Dead)
	time.Sleep(100 * time.Millisecond)
	pub("e2") // a later publish expires e1 from the history
	settleNext(transport.Complete)
	stats := func() transport.Stats {
		st, err := d.(transport.Inspector).Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st[0]
	}
	if st := stats(); st.Dead != 1 || st.Failed != 1 {
		t.Fatalf("before Replay: %+v, want 1 dead and 1 failed", st)
	}
	if n, err := d.(transport.Replayer).Replay(ctx, "h", time.Time{}); err != nil || n != 2 {
		t.Fatalf("Replay = %d, %v; want 2", n, err)
	}
	if st := stats(); st.Dead != 0 || st.Failed != 1 || st.Waiting != 2 {
		t.Fatalf("after Replay: %+v, want 0 dead, 1 failed (still counted) and 2 waiting", st)
	}
}
