package ripple_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/memory"
)

// TestHandlerContextEvent checks that the event a handler's ctx carries
// is the event the handler got, and that a publish from the handler
// passes on its correlation id, id (as causation) and trace context.
func TestHandlerContextEvent(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	mismatch := make(chan string, 1)
	children := make(chan ripple.Event, 1)
	if err := bus.On("parent.seen", "parent", func(ctx context.Context, e ripple.Event) error {
		// The publish comes before anything asks the ctx for its event.
		derived, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if _, err := bus.Publish(derived, "child.seen", map[string]int{"n": 1}); err != nil {
			return err
		}
		got, ok := ripple.EventFromContext(ctx)
		if !ok || !reflect.DeepEqual(got, e) {
			mismatch <- "EventFromContext differs from the handler's event"
		}
		// A derived ctx carries the same event.
		if got, ok := ripple.EventFromContext(derived); !ok || !reflect.DeepEqual(got, e) {
			mismatch <- "EventFromContext of a derived ctx differs from the handler's event"
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.On("child.seen", "child", func(_ context.Context, e ripple.Event) error {
		children <- e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	parent, err := bus.Publish(ctx, "parent.seen", map[string]int{"n": 0},
		ripple.WithCorrelationID("request-9"), ripple.WithTraceParent(trace), ripple.WithHeader("tenant", "acme"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case child := <-children:
		if child.CorrelationID != "request-9" || child.CausationID != parent.ID || child.TraceParent != trace {
			t.Errorf("child event: correlation %q, causation %q, traceparent %q; want request-9, %q, %q",
				child.CorrelationID, child.CausationID, child.TraceParent, parent.ID, trace)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the child event was not handled")
	}
	select {
	case m := <-mismatch:
		t.Error(m)
	default:
	}
}
