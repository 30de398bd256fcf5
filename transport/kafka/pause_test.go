package kafka

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestPause: a Pause in one process stops another's receiver within about
// a second; nothing published meanwhile is lost, and Resume delivers it.
func TestPause(t *testing.T) {
	url := newURL(t)
	open := func() *Driver {
		dr, err := Open(bg, url, transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dr.Close() })
		return dr.(*Driver)
	}
	a, b := open(), open()
	if err := a.Pause(bg, "pause.unknown"); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("Pause of an unknown handler: %v, want ErrNotFound", err)
	}
	sub, err := b.Subscribe(bg, transport.SubscriptionSpec{Name: "pause.worker", Pattern: "pause.>", Lease: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := a.Pause(bg, "pause.worker"); err != nil {
		t.Fatal(err)
	}
	if err := a.Pause(bg, "pause.worker"); err != nil {
		t.Errorf("pausing a paused handler: %v", err)
	}
	waitFor(t, "the other process to see the pause", 10*time.Second, func() bool { return b.isPaused("pause.worker") })
	if err := a.Publish(bg, []*transport.Message{{ID: "p1", Type: "pause.event.sent", Time: time.Now(), Attrs: map[string]string{"source": "t"}}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, time.Second)
	ds, _ := sub.Receive(ctx, 1)
	cancel()
	if len(ds) != 0 {
		t.Fatalf("a paused handler received %s", ds[0].ID)
	}
	st, err := a.Stats(bg)
	if err != nil || len(st) != 1 || !st[0].Paused {
		t.Errorf("Stats of the paused handler: %+v, %v; want Paused", st, err)
	}
	if err := a.Resume(bg, "pause.worker"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	ds, err = sub.Receive(ctx, 1)
	if err != nil || len(ds) != 1 || ds[0].ID != "p1" {
		t.Fatalf("after Resume: %v, %v; want p1", ds, err)
	}
}
