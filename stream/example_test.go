package stream_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/stream"
)

// Signup is the data of a user.signup.completed event.
type Signup struct {
	UserID string `json:"user_id"`
	Plan   string `json:"plan"`
}

// Signups per plan per minute, from user.signup.completed: each minute's
// counts are published as signup.plan.counted events once the minute is
// over and late signups have had five seconds to arrive.
func Example() {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://") // sqlite://app.db, kafka://… in production
	if err != nil {
		panic(err)
	}
	defer bus.Close()

	s := stream.New(bus, "signups-per-plan", "user.signup.completed",
		stream.Tumbling(time.Minute),
		stream.KeyByData(func(s Signup) string { return s.Plan }),
		stream.AllowedLateness(5*time.Second),
		stream.Emit("signup.plan.counted"))
	if err := s.Count(); err != nil {
		panic(err)
	}

	// Whoever needs the counts handles the results like any event.
	var mu sync.Mutex
	var report []string
	err = ripple.Handle(bus, "signup.plan.counted", "dashboard.signups",
		func(ctx context.Context, r stream.Result[int64], e ripple.Event) error {
			mu.Lock()
			defer mu.Unlock()
			report = append(report, fmt.Sprintf("%s-%s %-4s %d",
				r.Start.Format("15:04"), r.End.Format("15:04"), r.Key, r.Value))
			return nil
		})
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}

	nine := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	signup := func(user, plan string, at time.Duration) {
		// The event time is when the signup happened, which decides
		// its minute, however late the event is published.
		if _, err := bus.Publish(ctx, "user.signup.completed", Signup{user, plan}, ripple.WithEventTime(nine.Add(at))); err != nil {
			panic(err)
		}
	}
	for i, plan := range []string{"free", "pro", "free", "team", "free", "pro"} {
		signup(fmt.Sprint("u", i), plan, time.Duration(i)*9*time.Second)
	}
	wait(bus)
	signup("u6", "team", 63*time.Second) // within 9:01's first five seconds: 9:00 stays open
	signup("u7", "pro", 58*time.Second)  // late, but within the lateness: counted in 9:00
	wait(bus)
	signup("u8", "free", 66*time.Second) // 9:00 closes
	wait(bus)

	slices.Sort(report)
	for _, line := range report {
		fmt.Println(line)
	}
	fmt.Printf("%d signups counted, %d dropped as too late\n", s.Stats().Events, s.Stats().Dropped)
	// Output:
	// 09:00-09:01 free 3
	// 09:00-09:01 pro  3
	// 09:00-09:01 team 1
	// 9 signups counted, 0 dropped as too late
}

func wait(bus *ripple.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.WaitIdle(ctx); err != nil {
		panic(err)
	}
}

// A hopping window with a reducer: the revenue per country over the last
// hour, every ten minutes.
func ExampleAggregate() {
	type Order struct {
		Country string `json:"country"`
		Cents   int64  `json:"cents"`
	}
	bus, err := ripple.Open(context.Background(), "memory://")
	if err != nil {
		panic(err)
	}
	defer bus.Close()
	s := stream.New(bus, "revenue-per-country-hourly", "order.placed",
		stream.Hopping(time.Hour, 10*time.Minute),
		stream.KeyByData(func(o Order) string { return o.Country }),
		stream.AllowedLateness(time.Minute),
		stream.Emit("order.revenue.summed"))
	err = stream.Aggregate(s, func() int64 { return 0 }, func(sum int64, o Order) int64 { return sum + o.Cents })
	fmt.Println(err)
	// Output: <nil>
}
