package nats

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestReceiveBatch: Receive hands out what is waiting in one call, up to
// max (the first message's pending count decides whether to ask for more),
// and one message when only one is waiting.
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

	publish(5, 0)
	ds := receive(10)
	if len(ds) != 5 {
		t.Fatalf("Receive(10) with 5 waiting handed out %d", len(ds))
	}
	for i, d := range ds {
		if want := fmt.Sprintf("b-%d", i); d.ID != want {
			t.Errorf("delivery %d is %s, want %s", i, d.ID, want)
		}
	}

	publish(4, 5)
	if ds := receive(3); len(ds) != 3 {
		t.Fatalf("Receive(3) with 4 waiting handed out %d", len(ds))
	}
	if ds := receive(10); len(ds) != 1 || ds[0].ID != "b-8" {
		t.Fatalf("Receive(10) with 1 waiting handed out %v", ds)
	}
}
