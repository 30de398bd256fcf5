package kafka

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/ripplehq/ripple/transport"
)

// TestEphemeral: an ephemeral subscription gets what is published after
// it, retries in memory, and leaves no group or topic behind.
func TestEphemeral(t *testing.T) {
	dr, err := Open(bg, newURL(t), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d := dr.(*Driver)
	defer d.Close()
	pub := func(id string) {
		t.Helper()
		if err := d.Publish(bg, []*transport.Message{{ID: id, Type: "tail.me.seen", Time: time.Now(), Attrs: map[string]string{"source": "t"}}}); err != nil {
			t.Fatal(err)
		}
	}
	pub("before")
	spec := transport.SubscriptionSpec{Name: "tail.abc123", Pattern: "tail.>", Lease: time.Second, Ephemeral: true}
	sub, err := d.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	pub("after")
	recv := func() *transport.Delivery {
		t.Helper()
		ctx, cancel := context.WithTimeout(bg, 20*time.Second)
		defer cancel()
		ds, err := sub.Receive(ctx, 1)
		if err != nil || len(ds) != 1 {
			t.Fatalf("Receive: %d, %v", len(ds), err)
		}
		return ds[0]
	}
	first := recv()
	if first.ID != "after" || first.Attempt != 1 {
		t.Fatalf("got %s attempt %d, want after attempt 1 (not the event from before the subscription)", first.ID, first.Attempt)
	}
	if err := sub.Settle(bg, []transport.Settlement{{Delivery: first, Outcome: transport.Retry, Delay: 10 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	again := recv()
	if again.ID != "after" || again.Attempt != 2 {
		t.Fatalf("retry got %s attempt %d, want after attempt 2", again.ID, again.Attempt)
	}
	if err := sub.Settle(bg, []transport.Settlement{{Delivery: again, Outcome: transport.Complete}}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(d.cl)
	groups, err := adm.ListGroups(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups() {
		if strings.Contains(g, "tail.abc123") {
			t.Errorf("the ephemeral subscription left consumer group %s", g)
		}
	}
	topics, err := adm.ListTopics(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range topics.Names() {
		if strings.Contains(name, "tail.abc123") {
			t.Errorf("the ephemeral subscription left topic %s", name)
		}
	}
	if _, err := d.DeadLetters(bg, spec.Name, 10); err == nil {
		t.Errorf("DeadLetters of an ephemeral subscription's name: nil error, want not found")
	}
}
