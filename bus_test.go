package ripple_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
)

// A handler still draining during Shutdown may publish its follow-up
// events; only new handlers and starts are refused.
func TestPublishWhileDraining(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	release := make(chan struct{})
	var publishErr atomic.Value
	if err := bus.On("order.placed", "fulfil", func(ctx context.Context, e ripple.Event) error {
		close(entered)
		<-release
		_, err := bus.Publish(ctx, "order.fulfilled", struct{}{})
		publishErr.Store(errOrNil{err})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "order.placed", struct{}{}); err != nil {
		t.Fatal(err)
	}
	<-entered
	done := make(chan error, 1)
	go func() { done <- bus.Shutdown(context.Background()) }()
	// Wait until Shutdown has begun: On is then refused with ErrClosed.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		err := bus.On("x.y", fmt.Sprintf("late-%d", i), func(context.Context, ripple.Event) error { return nil })
		if errors.Is(err, ripple.ErrClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Shutdown did not begin; On returned %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := publishErr.Load().(errOrNil).err; got != nil {
		t.Fatalf("publish from a draining handler failed: %v", got)
	}
	if _, err := bus.Publish(ctx, "order.placed", struct{}{}); !errors.Is(err, ripple.ErrClosed) {
		t.Fatalf("publish after Shutdown = %v, want ErrClosed", err)
	}
}

type errOrNil struct{ err error }

func TestOpenErrorsNameTheFix(t *testing.T) {
	ctx := context.Background()
	_, err := ripple.Open(ctx, "kafka://localhost:9092")
	if !errors.Is(err, ripple.ErrUnknownTransport) || !strings.Contains(err.Error(), "no kafka transport yet") || strings.Contains(err.Error(), "import") {
		t.Fatalf("planned transport error = %v; want ErrUnknownTransport saying it does not exist yet, naming no import", err)
	}
	_, err = ripple.Open(ctx, "foo://x")
	if !errors.Is(err, ripple.ErrUnknownTransport) || !strings.Contains(err.Error(), "known schemes are") || strings.Contains(err.Error(), "kafka") {
		t.Fatalf("unknown transport error = %v; want the schemes Ripple has", err)
	}
	_, err = ripple.Open(ctx, "app.db")
	if err == nil || !strings.Contains(err.Error(), "scheme") {
		t.Fatalf("URL without scheme: %v", err)
	}
	_, err = ripple.Open(ctx, "memory://", ripple.MaxEventSize(0))
	if !errors.Is(err, ripple.ErrInvalidOption) {
		t.Fatalf("MaxEventSize(0): %v", err)
	}
}

// recordingDriver keeps the messages the core hands to Publish.
type recordingDriver struct {
	transport.Driver
	msgs []*transport.Message
}

func (r *recordingDriver) Publish(ctx context.Context, msgs []*transport.Message) error {
	r.msgs = append(r.msgs, msgs...)
	return r.Driver.Publish(ctx, msgs)
}

func TestIDGeneratedOnlyForRippleIDs(t *testing.T) {
	rec := &recordingDriver{Driver: memory.New(transport.Retention{})}
	bus, err := ripple.New(rec)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	ctx := context.Background()
	if _, err := bus.Publish(ctx, "order.placed", struct{}{}); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "order.placed", struct{}{}, ripple.WithID("order-1")); err != nil {
		t.Fatal(err)
	}
	if len(rec.msgs) != 2 || !rec.msgs[0].IDGenerated || rec.msgs[1].IDGenerated {
		t.Fatalf("IDGenerated = %v, %v; want true for a generated id and false for WithID", rec.msgs[0].IDGenerated, rec.msgs[1].IDGenerated)
	}
}

func TestStatsEmptyNotNil(t *testing.T) {
	bus, err := ripple.Open(context.Background(), "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	st, err := bus.Stats(context.Background())
	if err != nil || st == nil || len(st) != 0 {
		t.Fatalf("Stats on a bus without handlers = %#v, %v; want an empty, non-nil slice", st, err)
	}
}

// TestTraceParent checks that WithTraceParent sets the event's trace
// context, that a handler's follow-up event carries it on, and that a
// malformed one is refused with an example of the form.
func TestTraceParent(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.New(memory.New(transport.Retention{}))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	got := make(chan string, 2)
	if err := bus.On("order.placed", "follow", func(ctx context.Context, e ripple.Event) error {
		got <- e.TraceParent
		_, err := bus.Publish(ctx, "order.confirmed", 1)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.On("order.confirmed", "confirmed", func(_ context.Context, e ripple.Event) error {
		got <- e.TraceParent
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "order.placed", 1, ripple.WithTraceParent(tp)); err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"the event", "the follow-up event"} {
		select {
		case g := <-got:
			if g != tp {
				t.Fatalf("%s has traceparent %q, want %q", who, g, tp)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s was not handled", who)
		}
	}
	for _, bad := range []string{"", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"} {
		if _, err := bus.Publish(ctx, "order.placed", 1, ripple.WithTraceParent(bad)); !errors.Is(err, ripple.ErrInvalidOption) || !strings.Contains(err.Error(), "00-4bf92f3577b34da6a3ce929d0e0e4736") {
			t.Errorf("WithTraceParent(%q): %v, want an invalid-option error with an example", bad, err)
		}
	}
}
