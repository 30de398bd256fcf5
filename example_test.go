package ripple_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/memory"
)

type UserSignup struct {
	UserID string `json:"user_id"`
	Email  string `json:"email"`
}

// A handler name is a durable subscription: every handler gets every
// event it matches, and the handler's result decides ack or retry.
func Example() {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://") // "sqlite://app.db" in production
	if err != nil {
		panic(err)
	}
	defer bus.Close()

	done := make(chan struct{})
	err = bus.On("user.signup.completed", "email.welcome", func(ctx context.Context, e ripple.Event) error {
		var s UserSignup
		if err := e.Decode(&s); err != nil {
			return ripple.Permanent(err) // bad data: no retry, straight to the dead-letter queue
		}
		fmt.Println("welcome", s.Email)
		close(done)
		return nil
	}, ripple.Concurrency(10), ripple.MaxAttempts(5))
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	if _, err := bus.Publish(ctx, "user.signup.completed", UserSignup{UserID: "u1", Email: "ada@example.com"},
		ripple.WithKey("u1")); err != nil {
		panic(err)
	}
	<-done
	// Output: welcome ada@example.com
}

// Handle decodes the payload into a Go type before the handler runs.
func ExampleHandle() {
	ctx := context.Background()
	bus, _ := ripple.Open(ctx, "memory://")
	defer bus.Close()

	done := make(chan struct{})
	_ = ripple.Handle(bus, "user.signup.completed", "crm.sync", func(ctx context.Context, s UserSignup, e ripple.Event) error {
		fmt.Printf("%s signed up (event type %s)\n", s.UserID, e.Type)
		close(done)
		return nil
	})
	_ = bus.Start(ctx)
	_, _ = bus.Publish(ctx, "user.signup.completed", UserSignup{UserID: "u2"})
	<-done
	// Output: u2 signed up (event type user.signup.completed)
}

// A Permanent error, or the last attempt, moves the event to the
// handler's dead-letter queue, where it can be listed, requeued or purged.
func ExampleBus_DeadLetters() {
	ctx := context.Background()
	bus, _ := ripple.Open(ctx, "memory://")
	defer bus.Close()

	_ = bus.On("invoice.payment.failed", "billing.dunning", func(ctx context.Context, e ripple.Event) error {
		return ripple.Permanent(errors.New("customer has no card on file"))
	})
	_ = bus.Start(ctx)
	ev, _ := bus.Publish(ctx, "invoice.payment.failed", map[string]string{"invoice": "in_1"})

	for {
		dead, _ := bus.DeadLetters(ctx, "billing.dunning", 10)
		if len(dead) == 1 {
			fmt.Println(dead[0].Event.ID == ev.ID, dead[0].Attempts, dead[0].Error)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	n, _ := bus.PurgeAllDead(ctx, "billing.dunning")
	fmt.Println("purged", n)
	// Output:
	// true 1 permanent: customer has no card on file
	// purged 1
}

// A handler that publishes with its own ctx passes on the correlation id,
// and the new event's causation id is the handled event's id.
func ExampleBus_Publish_causation() {
	ctx := context.Background()
	bus, _ := ripple.Open(ctx, "memory://")
	defer bus.Close()

	got := make(chan ripple.Event, 1)
	_ = bus.On("order.placed", "fulfilment.reserve", func(ctx context.Context, e ripple.Event) error {
		_, err := bus.Publish(ctx, "stock.reserved", map[string]int{"qty": 1})
		return err
	})
	_ = bus.On("stock.reserved", "audit.log", func(ctx context.Context, e ripple.Event) error {
		got <- e
		return nil
	})
	_ = bus.Start(ctx)
	order, _ := bus.Publish(ctx, "order.placed", map[string]string{"order": "o1"}, ripple.WithCorrelationID("req-42"))
	reserved := <-got
	fmt.Println(reserved.CorrelationID, reserved.CausationID == order.ID)
	// Output: req-42 true
}

// Run blocks until its context ends, then drains running handlers within
// ShutdownTimeout.
func ExampleBus_Run() {
	ctx, cancel := context.WithCancel(context.Background())
	bus, _ := ripple.Open(ctx, "memory://", ripple.ShutdownTimeout(5*time.Second))

	_ = bus.On("report.requested", "reports.build", func(ctx context.Context, e ripple.Event) error {
		cancel() // stands in for SIGTERM arriving while a handler runs
		time.Sleep(10 * time.Millisecond)
		fmt.Println("report built")
		return nil
	})
	_ = bus.Start(ctx) // creates the subscription, so the event below reaches it
	_, _ = bus.Publish(ctx, "report.requested", struct{}{})
	fmt.Println("run returned:", bus.Run(ctx))
	// Output:
	// report built
	// run returned: <nil>
}
