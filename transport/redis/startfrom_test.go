package redis

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestStartFromHistory checks SubscriptionSpec.From: a new subscription
// starts with the retained events of its pattern published at or after
// From (completed, undelivered or dead-lettered for other handlers), each
// once; a zero From starts from now on; an existing subscription keeps
// its position.
func TestStartFromHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	a := subscribe(t, d, "a", "a.*", time.Minute)
	subscribe(t, d, "all", ">", time.Minute) // holds every event too
	now := time.Now()
	at := func(typ string, ago time.Duration) *transport.Message {
		m := msg(typ)
		m.Time = now.Add(-ago)
		return m
	}
	e1, e2, e3, e4 := at("a.b", 3*time.Hour), at("a.c", 2*time.Hour), at("b.x", 2*time.Hour), at("a.d", time.Hour)
	publish(t, d, e1)
	got := receive(t, a, 1, 5*time.Second)
	settle(t, a, transport.Complete, 0, got...) // e1 completed for a
	publish(t, d, e4)
	settle(t, a, transport.Dead, 0, receive(t, a, 1, 5*time.Second)...) // e4 dead for a
	publish(t, d, e2, e3)                                               // e2 undelivered
	// e6 waits in the delayed sets; e7 too, but is older than proj2's From.
	e6, e7 := at("a.e", 30*time.Minute), at("a.f", 4*time.Hour)
	e6.Delay, e7.Delay = time.Hour, time.Hour
	publish(t, d, e6, e7)
	if err := d.acks.flush(ctx); err != nil {
		t.Fatal(err)
	}

	ids := func(ds []*transport.Delivery) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.ID)
			if d.Attempt != 1 {
				t.Errorf("%s: attempt %d, want 1", d.ID, d.Attempt)
			}
		}
		return out
	}
	from := func(name string, f time.Time) transport.Subscription {
		s, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: name, Pattern: "a.*", Lease: time.Minute, From: f})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}

	p := from("proj", transport.Beginning)
	all := ids(receive(t, p, 3, 5*time.Second))
	if want := []string{e1.ID, e2.ID, e4.ID}; !equalIDs(all, want) {
		t.Fatalf("from the beginning: got %v, want %v in time order", all, want)
	}
	receiveNone(t, p, 300*time.Millisecond)

	p2 := from("proj2", now.Add(-150*time.Minute))
	if got, want := ids(receive(t, p2, 2, 5*time.Second)), []string{e2.ID, e4.ID}; !equalIDs(got, want) {
		t.Fatalf("from 150 minutes ago: got %v, want %v", got, want)
	}
	receiveNone(t, p2, 300*time.Millisecond)

	delayed := func(name string) map[string]bool {
		ids := map[string]bool{}
		if err := d.delayedIDs(ctx, name, ids); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if got := delayed("proj"); len(got) != 2 || !got[e6.ID] || !got[e7.ID] {
		t.Fatalf("from the beginning: delayed set holds %v, want %s and %s", got, e6.ID, e7.ID)
	}
	if got := delayed("proj2"); len(got) != 1 || !got[e6.ID] {
		t.Fatalf("from 150 minutes ago: delayed set holds %v, want %s", got, e6.ID)
	}

	fresh := from("fresh", time.Time{})
	receiveNone(t, fresh, 300*time.Millisecond)

	// Subscribing an existing subscription again keeps its position.
	again := from("proj", transport.Beginning)
	receiveNone(t, again, 300*time.Millisecond)

	// And events published afterwards reach them all once.
	e5 := msg("a.z")
	publish(t, d, e5)
	for _, s := range []transport.Subscription{p, p2, fresh} {
		if got := receive(t, s, 1, 5*time.Second); got[0].ID != e5.ID {
			t.Fatalf("after subscribing: got %s, want %s", got[0].ID, e5.ID)
		}
	}
}

// equalIDs compares ids in order: copies are appended oldest first.
func equalIDs(got, want []string) bool { return slices.Equal(got, want) }
