package amqp

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

func publishN(t *testing.T, d *Driver, typ, prefix string, n int) {
	t.Helper()
	var msgs []*transport.Message
	for i := range n {
		msgs = append(msgs, &transport.Message{ID: fmt.Sprintf("%s-%d", prefix, i), Type: typ, Time: time.Now(), Attrs: map[string]string{"source": "t"}, IDGenerated: true})
	}
	if err := d.Publish(bg, msgs); err != nil {
		t.Fatal(err)
	}
}

// TestSentAheadNotCounted: receivers that close after taking part of
// what the broker sent ahead (their prefetch) give the rest back without
// an attempt counted, on both queue types: every event reaches the last
// receiver as attempt 1.
func TestSentAheadNotCounted(t *testing.T) {
	for _, qt := range []string{"quorum", "classic"} {
		t.Run(qt, func(t *testing.T) {
			d := openDriver(t, namespaceURL(t)+"&queue_type="+qt)
			spec := transport.SubscriptionSpec{Name: "ahead", Pattern: "ahead.>", Lease: time.Minute}
			if _, err := d.Subscribe(bg, spec); err != nil { // the queue exists before publishing
				t.Fatal(err)
			}
			const rounds, per = 6, 8
			total := 0
			for r := range rounds {
				publishN(t, d, "ahead.sent", fmt.Sprintf("r%d", r), per)
				sub, err := d.Subscribe(bg, spec)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(bg, 20*time.Second)
				ds, err := sub.Receive(ctx, 4) // prefetch 4
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				var ss []transport.Settlement
				for _, dv := range ds {
					if dv.Attempt != 1 {
						t.Errorf("round %d: %s came with attempt %d, want 1", r, dv.ID, dv.Attempt)
					}
					ss = append(ss, transport.Settlement{Delivery: dv, Outcome: transport.Complete})
				}
				total += len(ds)
				if err := sub.Settle(bg, ss); err != nil {
					t.Fatal(err)
				}
				if err := sub.Close(); err != nil {
					t.Fatal(err)
				}
			}
			sub, err := d.Subscribe(bg, spec)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			for total < rounds*per {
				ctx, cancel := context.WithTimeout(bg, 20*time.Second)
				ds, err := sub.Receive(ctx, 10)
				cancel()
				if err != nil {
					t.Fatalf("after %d of %d events: %v", total, rounds*per, err)
				}
				var ss []transport.Settlement
				for _, dv := range ds {
					if dv.Attempt != 1 {
						t.Errorf("%s came back with attempt %d after graceful closes, want 1", dv.ID, dv.Attempt)
					}
					ss = append(ss, transport.Settlement{Delivery: dv, Outcome: transport.Complete})
				}
				total += len(ds)
				if err := sub.Settle(bg, ss); err != nil {
					t.Fatal(err)
				}
			}
			if total != rounds*per {
				t.Errorf("handled %d events, want %d", total, rounds*per)
			}
		})
	}
}

// TestSentAheadFreedWhenBusy: events the broker sent ahead to a receiver
// whose slots stay busy (no further Receive) are given back within about
// a second, so another process's receiver handles them, as attempt 1.
func TestSentAheadFreedWhenBusy(t *testing.T) {
	raw := namespaceURL(t)
	a, b := openDriver(t, raw), openDriver(t, raw)
	spec := transport.SubscriptionSpec{Name: "busy", Pattern: "busy.>", Lease: time.Minute}
	busy, err := a.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	publishN(t, a, "busy.sent", "b", 5)
	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	held, err := busy.Receive(ctx, 5) // prefetch 5
	cancel()
	if err != nil || len(held) == 0 {
		t.Fatalf("Receive: %v", err)
	}
	// Settle one: its credit lets the broker send one more ahead to the
	// busy receiver, which never receives again.
	if err := busy.Settle(bg, []transport.Settlement{{Delivery: held[0], Outcome: transport.Complete}}); err != nil {
		t.Fatal(err)
	}
	publishN(t, a, "busy.sent", "late", 3)
	other, err := b.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	got := map[string]int{}
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < 3+5-len(held) && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(bg, time.Second)
		ds, _ := other.Receive(ctx, 10)
		cancel()
		var ss []transport.Settlement
		for _, dv := range ds {
			got[dv.ID] = dv.Attempt
			ss = append(ss, transport.Settlement{Delivery: dv, Outcome: transport.Complete})
		}
		_ = other.Settle(bg, ss)
	}
	if len(got) != 3+5-len(held) {
		t.Fatalf("the other receiver handled %v; want the %d events not leased by the busy one", got, 3+5-len(held))
	}
	for id, at := range got {
		if at != 1 {
			t.Errorf("%s reached the other receiver as attempt %d, want 1", id, at)
		}
	}
}

// TestPauseGivesBackSentAhead: a paused receiver hands out nothing and
// gives back what the broker had sent ahead to it, uncounted; after
// Resume another process's receiver gets those events as attempt 1, and
// Stats reports Paused meanwhile.
func TestPauseGivesBackSentAhead(t *testing.T) {
	raw := namespaceURL(t)
	a, b := openDriver(t, raw), openDriver(t, raw)
	spec := transport.SubscriptionSpec{Name: "pausing", Pattern: "pausing.>", Lease: time.Minute}
	subA, err := a.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer subA.Close()
	if err := b.Pause(bg, "no.such.handler"); err == nil {
		t.Error("Pause of an unknown handler succeeded")
	}
	publishN(t, a, "pausing.sent", "p", 6)
	// Take three (the prefetch) and complete them: the broker sends the
	// other three ahead.
	var first []*transport.Delivery
	for len(first) < 3 {
		ctx, cancel := context.WithTimeout(bg, 20*time.Second)
		ds, err := subA.Receive(ctx, 3-len(first))
		cancel()
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		first = append(first, ds...)
	}
	for _, dv := range first {
		if err := subA.Settle(bg, []transport.Settlement{{Delivery: dv, Outcome: transport.Complete}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Pause(bg, "pausing"); err != nil {
		t.Fatal(err)
	}
	// Once its last reading of the flag is older than pauseCheck (the
	// propagation bound), A's next Receive sees the flag another process
	// set, hands out nothing and gives back what it held.
	time.Sleep(pauseCheck + 50*time.Millisecond)
	// Shorter than aheadWait, so that what it held is back in the queue
	// because of the pause, not because it waited too long.
	ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
	more, _ := subA.Receive(ctx, 3)
	cancel()
	if len(more) != 0 {
		t.Fatalf("a paused receiver handed out %d events", len(more))
	}
	st, err := b.Stats(bg)
	if err != nil || len(st) != 1 || !st[0].Paused || st[0].Waiting != int64(6-len(first)) {
		t.Fatalf("Stats while paused: %+v, %v; want Paused with %d waiting", st, err, 6-len(first))
	}
	if err := a.Resume(bg, "pausing"); err != nil {
		t.Fatal(err)
	}
	subB, err := b.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer subB.Close()
	got := 0
	deadline := time.Now().Add(30 * time.Second)
	for got < 6-len(first) && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(bg, time.Second)
		ds, _ := subB.Receive(ctx, 1)
		cancel()
		for _, dv := range ds {
			got++
			if dv.Attempt != 1 {
				t.Errorf("%s came with attempt %d after a pause, want 1", dv.ID, dv.Attempt)
			}
			_ = subB.Settle(bg, []transport.Settlement{{Delivery: dv, Outcome: transport.Complete}})
		}
	}
	if got != 6-len(first) {
		t.Errorf("after Resume another receiver got %d events, want %d", got, 6-len(first))
	}
}

// TestPrefetchGrows: a receiver asked for one delivery at a time (as the
// core asks for a rate-limited handler) while it holds others gets its
// prefetch raised, so it can hold several at once.
func TestPrefetchGrows(t *testing.T) {
	d := openDriver(t, namespaceURL(t))
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "grow", Pattern: "grow.>", Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	publishN(t, d, "grow.sent", "g", 5)
	var held []*transport.Delivery
	for len(held) < 4 {
		ctx, cancel := context.WithTimeout(bg, 10*time.Second)
		ds, err := sub.Receive(ctx, 1)
		cancel()
		if err != nil {
			t.Fatalf("Receive %d while holding %d: %v (a prefetch of 1 would never send a second)", len(held)+1, len(held), err)
		}
		held = append(held, ds...)
	}
	for _, dv := range held {
		if dv.Attempt != 1 {
			t.Errorf("%s attempt %d, want 1", dv.ID, dv.Attempt)
		}
	}
}
