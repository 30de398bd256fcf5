package observe_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/observe"
	_ "github.com/ripplehq/ripple/transport/memory"
)

func Example() {
	ctx := context.Background()
	m := observe.NewMetrics()
	bus, err := ripple.Open(ctx, "memory://", ripple.WithHooks(m))
	if err != nil {
		panic(err)
	}
	done := make(chan struct{})
	err = bus.On("user.signup.completed", "email.welcome", func(ctx context.Context, e ripple.Event) error {
		close(done)
		return nil
	})
	if err != nil {
		panic(err)
	}
	m.Watch(bus)
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	if _, err := bus.Publish(ctx, "user.signup.completed", map[string]string{"email": "ada@example.com"}); err != nil {
		panic(err)
	}
	<-done
	// Shutdown waits for the handler's attempt to be recorded.
	if err := bus.Close(); err != nil {
		panic(err)
	}

	// In a program: http.Handle("/metrics", m.Handler()).
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "ripple_events_published_total") ||
			strings.HasPrefix(line, "ripple_handler_events_total") ||
			strings.HasPrefix(line, "ripple_event_latency_seconds_count") {
			fmt.Println(line)
		}
	}
	// Output:
	// ripple_event_latency_seconds_count{handler="email.welcome"} 1
	// ripple_events_published_total{type="user.signup.completed"} 1
	// ripple_handler_events_total{handler="email.welcome",outcome="dead"} 0
	// ripple_handler_events_total{handler="email.welcome",outcome="retry"} 0
	// ripple_handler_events_total{handler="email.welcome",outcome="success"} 1
}
