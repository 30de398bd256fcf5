package observe

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
)

var quiet = ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))

func openBus(t *testing.T, m *Metrics) *ripple.Bus {
	t.Helper()
	bus, err := ripple.Open(context.Background(), "memory://", ripple.WithHooks(m), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	return bus
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCountersAndHistograms(t *testing.T) {
	m := NewMetrics()
	bus := openBus(t, m)
	ctx := context.Background()

	var flakyCalls atomic.Int32
	must(t, bus.On("order.placed", "mail.ok", func(context.Context, ripple.Event) error {
		time.Sleep(2 * time.Millisecond)
		return nil
	}))
	must(t, bus.On("order.placed", "billing.flaky", func(context.Context, ripple.Event) error {
		if flakyCalls.Add(1) == 1 {
			return errors.New("card processor unavailable")
		}
		return nil
	}, ripple.Backoff(time.Millisecond, time.Millisecond)))
	must(t, bus.On("order.placed", "audit.broken", func(context.Context, ripple.Event) error {
		return ripple.Permanent(errors.New("schema mismatch"))
	}))
	m.Watch(bus)
	must(t, bus.Start(ctx))

	for range 2 {
		if _, err := bus.Publish(ctx, "order.placed", map[string]int{"n": 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bus.Publish(ctx, "Bad Name", map[string]int{}); err == nil {
		t.Fatal("publish of an invalid name succeeded")
	}
	waitFor(t, "every handler to finish both events", func() bool {
		return testutil.ToFloat64(m.handled.WithLabelValues("mail.ok", "success")) == 2 &&
			testutil.ToFloat64(m.handled.WithLabelValues("billing.flaky", "success")) == 2 &&
			testutil.ToFloat64(m.handled.WithLabelValues("audit.broken", "dead")) == 2
	})

	want := `
# HELP ripple_events_published_total Events stored by Publish, by event type.
# TYPE ripple_events_published_total counter
ripple_events_published_total{type="order.placed"} 2
# HELP ripple_handler_events_total Handler attempts by handler and outcome (success, retry, dead).
# TYPE ripple_handler_events_total counter
ripple_handler_events_total{handler="audit.broken",outcome="dead"} 2
ripple_handler_events_total{handler="audit.broken",outcome="retry"} 0
ripple_handler_events_total{handler="audit.broken",outcome="success"} 0
ripple_handler_events_total{handler="billing.flaky",outcome="dead"} 0
ripple_handler_events_total{handler="billing.flaky",outcome="retry"} 1
ripple_handler_events_total{handler="billing.flaky",outcome="success"} 2
ripple_handler_events_total{handler="mail.ok",outcome="dead"} 0
ripple_handler_events_total{handler="mail.ok",outcome="retry"} 0
ripple_handler_events_total{handler="mail.ok",outcome="success"} 2
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want),
		"ripple_events_published_total", "ripple_handler_events_total"); err != nil {
		t.Fatal(err)
	}

	// Every attempt is timed; latency counts only the attempt that
	// finished the event, so the retried attempt is not in it.
	for handler, attempts := range map[string]int{"mail.ok": 2, "billing.flaky": 3, "audit.broken": 2} {
		if got := histogramCount(t, m, "ripple_handler_duration_seconds", handler); got != uint64(attempts) {
			t.Errorf("duration count for %s = %d, want %d", handler, got, attempts)
		}
		if got := histogramCount(t, m, "ripple_event_latency_seconds", handler); got != 2 {
			t.Errorf("latency count for %s = %d, want 2", handler, got)
		}
	}
	if sum := histogramSum(t, m, "ripple_handler_duration_seconds", "mail.ok"); sum < 0.004 {
		t.Errorf("duration sum for mail.ok = %gs, want at least the 2 × 2ms the handler slept", sum)
	}

	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric lint: %s: %s", p.Metric, p.Text)
	}
}

func TestQueueDepth(t *testing.T) {
	m := NewMetrics()
	bus := openBus(t, m)
	ctx := context.Background()

	release := make(chan struct{})
	var started atomic.Int32
	must(t, bus.On("report.requested", "report.build", func(ctx context.Context, _ ripple.Event) error {
		started.Add(1)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, ripple.Concurrency(1)))
	must(t, bus.On("report.requested", "report.reject", func(context.Context, ripple.Event) error {
		return ripple.Permanent(errors.New("no"))
	}))
	must(t, bus.Start(ctx))
	m.Watch(bus)

	for range 3 {
		_, err := bus.Publish(ctx, "report.requested", map[string]int{})
		must(t, err)
	}
	_, err := bus.Publish(ctx, "report.requested", map[string]int{}, ripple.WithDelay(time.Hour))
	must(t, err)
	waitFor(t, "one report to start and the rejections", func() bool {
		return started.Load() == 1 && testutil.ToFloat64(m.handled.WithLabelValues("report.reject", "dead")) == 3
	})

	want := `
# HELP ripple_queue_depth Events per handler and state (waiting, active, delayed, dead), as the transport reports them at scrape time.
# TYPE ripple_queue_depth gauge
ripple_queue_depth{handler="report.build",state="active"} 1
ripple_queue_depth{handler="report.build",state="dead"} 0
ripple_queue_depth{handler="report.build",state="delayed"} 1
ripple_queue_depth{handler="report.build",state="waiting"} 2
ripple_queue_depth{handler="report.reject",state="active"} 0
ripple_queue_depth{handler="report.reject",state="dead"} 3
ripple_queue_depth{handler="report.reject",state="delayed"} 1
ripple_queue_depth{handler="report.reject",state="waiting"} 0
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "ripple_queue_depth"); err != nil {
		t.Fatal(err)
	}
	close(release)

	// A closed bus is not an error: its gauge simply disappears.
	must(t, bus.Close())
	if n := testutil.CollectAndCount(m, "ripple_queue_depth"); n != 0 {
		t.Errorf("closed bus: %d queue-depth series, want none", n)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	if _, err := reg.Gather(); err != nil {
		t.Errorf("gather after close: %v", err)
	}
}

// slowStats is a memory driver whose Stats outlasts any scrape timeout.
type slowStats struct{ transport.Driver }

func (slowStats) Stats(ctx context.Context) ([]transport.Stats, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestSlowStatsBoundedAndReported(t *testing.T) {
	m := NewMetrics(StatsTimeout(20 * time.Millisecond))
	bus, err := ripple.New(slowStats{memory.New(transport.Retention{})}, ripple.WithHooks(m), quiet)
	must(t, err)
	t.Cleanup(func() { _ = bus.Close() })
	m.Watch(bus)
	_, err = bus.Publish(context.Background(), "user.signup.completed", map[string]string{})
	must(t, err)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	start := time.Now()
	_, err = reg.Gather()
	if err == nil || !strings.Contains(err.Error(), "StatsTimeout") {
		t.Fatalf("Gather error = %v, want one naming StatsTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Gather took %s despite a 20ms StatsTimeout", d)
	}

	// The HTTP handler still serves the other metrics.
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != http.StatusOK || !strings.Contains(body, `ripple_events_published_total{type="user.signup.completed"} 1`) {
		t.Fatalf("handler: status %d, body:\n%s", rec.Code, body)
	}
	if strings.Contains(body, "ripple_queue_depth{") {
		t.Fatalf("handler served queue depth it could not read:\n%s", body)
	}
}

func TestStatsTimeoutRejectsNonPositive(t *testing.T) {
	defer func() {
		if p := recover(); p == nil || !strings.Contains(p.(string), "must be positive") {
			t.Fatalf("StatsTimeout(0) panic = %v, want one saying it must be positive", p)
		}
	}()
	StatsTimeout(0)
}

func histogramCount(t *testing.T, m *Metrics, name, handler string) uint64 {
	h := findHistogram(t, m, name, handler)
	return h.GetSampleCount()
}

func histogramSum(t *testing.T, m *Metrics, name, handler string) float64 {
	return findHistogram(t, m, name, handler).GetSampleSum()
}

func findHistogram(t *testing.T, m *Metrics, name, handler string) interface {
	GetSampleCount() uint64
	GetSampleSum() float64
} {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	must(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == "handler" && l.GetValue() == handler {
					return metric.GetHistogram()
				}
			}
		}
	}
	t.Fatalf("no %s series for handler %q", name, handler)
	return nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixedStats is a memory driver whose Stats reports fixed counts.
type fixedStats struct {
	transport.Driver
	stats []transport.Stats
}

func (f fixedStats) Stats(context.Context) ([]transport.Stats, error) { return f.stats, nil }

// ripple_queue_oldest_waiting_seconds comes from Stats.OldestWaiting at
// scrape time.
func TestOldestWaiting(t *testing.T) {
	m := NewMetrics()
	d := fixedStats{Driver: memory.New(transport.Retention{}), stats: []transport.Stats{
		{Handler: "email.welcome", Pattern: "user.>", Waiting: 3, OldestWaiting: 90 * time.Second},
		{Handler: "crm.sync", Pattern: "user.>"},
	}}
	bus, err := ripple.New(d, ripple.WithHooks(m), quiet)
	must(t, err)
	t.Cleanup(func() { _ = bus.Close() })
	m.Watch(bus)
	want := `
# HELP ripple_queue_oldest_waiting_seconds Age of the oldest event waiting to be handled, per handler (0 when none waits), as the transport reports it at scrape time.
# TYPE ripple_queue_oldest_waiting_seconds gauge
ripple_queue_oldest_waiting_seconds{handler="crm.sync"} 0
ripple_queue_oldest_waiting_seconds{handler="email.welcome"} 90
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "ripple_queue_oldest_waiting_seconds"); err != nil {
		t.Fatal(err)
	}
}

// Failed publishes are counted by type; a duplicate is neither a failure
// nor a new stored event.
func TestPublishFailures(t *testing.T) {
	m := NewMetrics()
	bus := openBus(t, m)
	ctx := context.Background()
	_, err := bus.Publish(ctx, "order.placed", map[string]int{"n": 1}, ripple.WithID("o-1"))
	must(t, err)
	dup, err := bus.Publish(ctx, "order.placed", map[string]int{"n": 2}, ripple.WithID("o-1"))
	must(t, err)
	if _, err := bus.Publish(ctx, "order.placed", func() {}); err == nil {
		t.Fatal("a func payload was published")
	}
	if _, err := bus.Publish(ctx, "Not A Name", 1); err == nil {
		t.Fatal("an invalid type was published")
	}
	if got := testutil.ToFloat64(m.failed.WithLabelValues("order.placed")); got != 1 {
		t.Errorf("order.placed failures %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.failed.WithLabelValues("invalid")); got != 1 {
		t.Errorf("invalid-type failures %v, want 1", got)
	}
	wantPublished := 2.0 // the duplicate, where the transport does not report it, counts as a publish
	if dup.Duplicate {
		wantPublished = 1
	}
	if got := testutil.ToFloat64(m.published.WithLabelValues("order.placed")); got != wantPublished {
		t.Errorf("published %v, want %v (duplicate reported: %v)", got, wantPublished, dup.Duplicate)
	}
	if n := testutil.CollectAndCount(m, "ripple_publish_failures_total"); n != 2 {
		t.Errorf("%d failure series, want 2 (order.placed and invalid)", n)
	}

	// A hook call with a duplicate: not a failure, not a publish.
	before := testutil.ToFloat64(m.published.WithLabelValues("order.placed"))
	m.OnPublish(ctx, ripple.Event{Type: "order.placed", Duplicate: true}, nil)
	if got := testutil.ToFloat64(m.published.WithLabelValues("order.placed")); got != before {
		t.Errorf("a duplicate counted as published")
	}
	if n := testutil.CollectAndCount(m, "ripple_publish_failures_total"); n != 2 {
		t.Errorf("a duplicate counted as a failure")
	}
}

// A publish on a closed bus is a failure of its event type, not of an
// "invalid" one.
func TestPublishOnClosedBusCountsItsType(t *testing.T) {
	m := NewMetrics()
	bus := openBus(t, m)
	must(t, bus.Close())
	if _, err := bus.Publish(context.Background(), "order.placed", 1); !errors.Is(err, ripple.ErrClosed) {
		t.Fatalf("Publish on a closed bus = %v, want ErrClosed", err)
	}
	if got := testutil.ToFloat64(m.failed.WithLabelValues("order.placed")); got != 1 {
		t.Errorf("order.placed failures %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.failed.WithLabelValues("invalid")); got != 0 {
		t.Errorf("invalid-type failures %v, want 0: the closed bus's failure lost its type", got)
	}
}
