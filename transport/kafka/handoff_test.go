package kafka

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestHandoffSkipsFinishedRecords forces the interleaving behind a lost
// attempt count: a process fails an event (its retry copy carries the
// attempt) and completes another, both after an earlier event that is
// still unfinished when the process hands its partition over gracefully.
// The committed offset cannot pass the unfinished event, so the next
// owner reads the finished records again; the commit metadata lists the
// unfinished ones, so the next owner skips the rest. Without it, the
// failed event's original would come back with its first attempt count
// (lower than its retry copy's) and the completed one would run twice.
func TestHandoffSkipsFinishedRecords(t *testing.T) {
	url := newURL(t, "partitions=1")
	spec := transport.SubscriptionSpec{Name: "handoff.worker", Pattern: "handoff.>", Lease: 30 * time.Second}
	open := func() *Driver {
		dr, err := Open(bg, url, transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dr.Close() })
		return dr.(*Driver)
	}
	msg := func(id string) *transport.Message {
		return &transport.Message{ID: id, Type: "handoff.event.sent", Time: time.Now(), Attrs: map[string]string{"source": "t"}, Data: []byte(`{}`)}
	}
	first := open()
	sub, err := first.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Publish(bg, []*transport.Message{msg("held"), msg("failed"), msg("done")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 60*time.Second)
	defer cancel()
	got := map[string]*transport.Delivery{}
	for len(got) < 3 {
		ds, err := sub.Receive(ctx, 3)
		if err != nil {
			t.Fatalf("receiving the three events: %v (have %d)", err, len(got))
		}
		for _, d := range ds {
			got[d.ID] = d
		}
	}
	// "failed" fails (copied to the retry topic with attempt 1),
	// "done" completes, and "held" is handed back unfinished, as a
	// graceful shutdown does with an event it did not start.
	if err := sub.Settle(bg, []transport.Settlement{
		{Delivery: got["failed"], Outcome: transport.Retry, Error: "deliberate"},
		{Delivery: got["done"], Outcome: transport.Complete},
		{Delivery: got["held"], Outcome: transport.Release},
	}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}

	// The next owner: it must get "held" as its first attempt and
	// "failed" as its second, once each, and not "done".
	next := open()
	sub2, err := next.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	// "after" follows the others in the event topic's one partition: once
	// it is delivered, anything of the event topic read again before it
	// has been delivered too.
	if err := next.Publish(bg, []*transport.Message{msg("after")}); err != nil {
		t.Fatal(err)
	}
	var seen []string
	attempts := map[string][]int{}
	for attempts["after"] == nil || attempts["failed"] == nil || attempts["held"] == nil {
		ds, err := sub2.Receive(ctx, 10)
		if err != nil {
			t.Fatalf("the next owner received %v, then: %v", seen, err)
		}
		var ss []transport.Settlement
		for _, d := range ds {
			seen = append(seen, fmt.Sprintf("%s#%d", d.ID, d.Attempt))
			attempts[d.ID] = append(attempts[d.ID], d.Attempt)
			ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
		}
		if err := sub2.Settle(bg, ss); err != nil {
			t.Fatal(err)
		}
	}
	if a := attempts["held"]; len(a) != 1 || a[0] != 1 {
		t.Errorf("the unfinished event came back as attempts %v, want [1] (deliveries %v)", a, seen)
	}
	if a := attempts["failed"]; len(a) != 1 || a[0] != 2 {
		t.Errorf("the failed event came back as attempts %v, want [2] from its retry copy alone (deliveries %v)", a, seen)
	}
	if a := attempts["done"]; len(a) != 0 {
		t.Errorf("the completed event was delivered again as attempts %v (deliveries %v)", a, seen)
	}
}
