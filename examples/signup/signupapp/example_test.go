package signupapp_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/examples/signup/signupapp"
	_ "github.com/ripplehq/ripple/transport/memory"
)

func Example() {
	ctx := context.Background()
	tally := signupapp.NewTally()
	bus, err := ripple.Open(ctx, "memory://", ripple.WithHooks(tally))
	if err != nil {
		panic(err)
	}
	defer bus.Close()

	cfg := signupapp.DefaultConfig()
	cfg.Timings = cfg.Timings.Scaled(0.01) // the article's latencies, 100× faster
	cfg.StripeFailureRate = 0              // a calm day at Stripe
	app, err := signupapp.New(bus, cfg)
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}

	user, ev, err := app.Signup(ctx, "ada@example.com")
	if err != nil {
		panic(err)
	}
	fmt.Println("published", ev.Type, "for", user.Email)

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tally.Wait(wctx, signupapp.Handlers(), []string{ev.ID}); err != nil {
		panic(err)
	}
	for _, effect := range app.Effects(user.ID) {
		fmt.Println("done:", effect)
	}
	// Output:
	// published user.signup.completed for ada@example.com
	// done: email.welcome
	// done: billing.stripe-customer
	// done: workspace.create-default
	// done: slack.notify-sales
	// done: analytics.track-signup
}
