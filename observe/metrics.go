// Package observe exposes what a Ripple bus does as Prometheus metrics.
//
// A [Metrics] value is both a bus hook and a prometheus.Collector. Pass it
// to ripple.Open with ripple.WithHooks so it sees every publish and every
// handler attempt, point it at the bus with Watch so it can report queue
// depths, and register it or serve it:
//
//	m := observe.NewMetrics()
//	bus, err := ripple.Open(ctx, url, ripple.WithHooks(m))
//	...
//	m.Watch(bus)
//	http.Handle("/metrics", m.Handler())     // or prometheus.MustRegister(m)
//
// # Metrics
//
//	ripple_events_published_total{type}               counter: events stored by Publish (a
//	                                                  duplicate, which stores nothing, is not counted)
//	ripple_publish_failures_total{type}               counter: Publish calls that returned an error
//	                                                  (a duplicate is not a failure); type is
//	                                                  "invalid" for a name ValidateName refuses
//	ripple_handler_events_total{handler,outcome}      counter: handler attempts by outcome
//	                                                  (success, retry, dead)
//	ripple_handler_duration_seconds{handler}          histogram: time spent in one attempt
//	ripple_event_latency_seconds{handler}             histogram: from the event's Time (its
//	                                                  publish unless set with WithEventTime) to
//	                                                  the attempt that finished the event
//	                                                  (success or dead)
//	ripple_queue_depth{handler,state}                 gauge: events per state (waiting, active,
//	                                                  delayed, dead), read from bus.Stats at
//	                                                  scrape time
//	ripple_queue_oldest_waiting_seconds{handler}      gauge: age of the oldest event waiting to be
//	                                                  handled (0 when none waits), from bus.Stats
//	                                                  at scrape time
//
// The counters and histograms count what this process saw. The queue depth
// comes from the transport, so on a shared transport (sqlite, redis, ...)
// it covers every process and every handler the transport knows, including
// handlers registered only by other processes.
//
// The same names are produced whatever the transport, so dashboards and
// alerts keep working when the bus moves from sqlite:// to a broker.
package observe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/ripplehq/ripple"
)

// DefaultStatsTimeout bounds the bus.Stats call a scrape makes for the
// queue-depth gauge, so that a slow transport cannot stall the scrape.
const DefaultStatsTimeout = time.Second

// Queue states reported in ripple_queue_depth's state label.
const (
	StateWaiting = "waiting"
	StateActive  = "active"
	StateDelayed = "delayed"
	StateDead    = "dead"
)

// durationBuckets cover handler attempts from a few milliseconds up to
// ripple.DefaultTimeout.
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// latencyBuckets reach further than durationBuckets because publish-to-
// handled latency includes time spent waiting in the queue, delays and
// retry backoff.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

var outcomes = []ripple.Outcome{ripple.OutcomeSuccess, ripple.OutcomeRetry, ripple.OutcomeDead}

// Metrics records a bus's activity as Prometheus metrics. It implements
// ripple.PublishHook, ripple.HandleHook and prometheus.Collector. It is safe
// for concurrent use. Create it with NewMetrics.
type Metrics struct {
	published *prometheus.CounterVec
	failed    *prometheus.CounterVec
	handled   *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	latency   *prometheus.HistogramVec
	depth     *prometheus.Desc
	oldest    *prometheus.Desc

	statsTimeout time.Duration

	mu  sync.Mutex
	bus *ripple.Bus

	regOnce sync.Once
	handler http.Handler
}

// Option configures NewMetrics.
type Option func(*Metrics)

// StatsTimeout bounds the bus.Stats call each scrape makes for
// ripple_queue_depth. Default: DefaultStatsTimeout (1 s). It panics if d is
// not positive.
func StatsTimeout(d time.Duration) Option {
	if d <= 0 {
		panic(fmt.Sprintf("observe: StatsTimeout(%s): the timeout must be positive", d))
	}
	return func(m *Metrics) { m.statsTimeout = d }
}

// NewMetrics returns a Metrics with no bus watched yet. Like Prometheus's
// own constructors it treats bad configuration as a programming error and
// panics: the options are constants in practice, and the panic names the
// bad one.
func NewMetrics(opts ...Option) *Metrics {
	m := &Metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ripple_events_published_total",
			Help: "Events stored by Publish, by event type.",
		}, []string{"type"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ripple_publish_failures_total",
			Help: "Publish calls that returned an error, by event type (\"invalid\" for a name that is not valid). A duplicate publish is not a failure.",
		}, []string{"type"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ripple_handler_events_total",
			Help: "Handler attempts by handler and outcome (success, retry, dead).",
		}, []string{"handler", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ripple_handler_duration_seconds",
			Help:    "Time spent in one handler attempt.",
			Buckets: durationBuckets,
		}, []string{"handler"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ripple_event_latency_seconds",
			Help:    "Time from publish until a handler finished the event (succeeded or dead-lettered it), including queueing and retries.",
			Buckets: latencyBuckets,
		}, []string{"handler"}),
		depth: prometheus.NewDesc("ripple_queue_depth",
			"Events per handler and state (waiting, active, delayed, dead), as the transport reports them at scrape time.",
			[]string{"handler", "state"}, nil),
		oldest: prometheus.NewDesc("ripple_queue_oldest_waiting_seconds",
			"Age of the oldest event waiting to be handled, per handler (0 when none waits), as the transport reports it at scrape time.",
			[]string{"handler"}, nil),
		statsTimeout: DefaultStatsTimeout,
	}
	for _, o := range opts {
		if o == nil {
			panic("observe: nil Option passed to NewMetrics")
		}
		o(m)
	}
	return m
}

// Watch makes the queue-depth gauge and the zero-valued outcome series
// come from bus. A Metrics watches one bus at a time: a later call
// replaces the earlier bus, and Watch(nil) stops reporting queue depth.
func (m *Metrics) Watch(bus *ripple.Bus) {
	m.mu.Lock()
	m.bus = bus
	m.mu.Unlock()
	if bus != nil {
		m.initHandlers(bus)
	}
}

func (m *Metrics) watched() *ripple.Bus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bus
}

// initHandlers creates every outcome series of the bus's handlers at zero,
// so that rate() and absent() queries work before the first failure.
func (m *Metrics) initHandlers(bus *ripple.Bus) {
	for _, h := range bus.Handlers() {
		for _, o := range outcomes {
			m.handled.WithLabelValues(h, string(o))
		}
	}
}

// OnPublish counts stored events and failed publishes. A duplicate
// publish (e.Duplicate) stored nothing and failed in nothing, so it counts
// in neither.
func (m *Metrics) OnPublish(_ context.Context, e ripple.Event, err error) {
	switch {
	case err != nil:
		typ := e.Type
		if ripple.ValidateName(typ) != nil {
			// Keeps a caller's bad input from making series without end.
			typ = "invalid"
		}
		m.failed.WithLabelValues(typ).Inc()
	case !e.Duplicate:
		m.published.WithLabelValues(e.Type).Inc()
	}
}

// OnHandle records one finished handler attempt.
func (m *Metrics) OnHandle(res ripple.HandleResult) {
	m.handled.WithLabelValues(res.Handler, string(res.Outcome)).Inc()
	m.duration.WithLabelValues(res.Handler).Observe(res.Duration.Seconds())
	if res.Outcome != ripple.OutcomeRetry {
		m.latency.WithLabelValues(res.Handler).Observe(res.Latency.Seconds())
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.published.Describe(ch)
	m.failed.Describe(ch)
	m.handled.Describe(ch)
	m.duration.Describe(ch)
	m.latency.Describe(ch)
	ch <- m.depth
	ch <- m.oldest
}

// Collect implements prometheus.Collector. It reads the queue depth and
// the oldest waiting age with bus.Stats, bounded by StatsTimeout. When the
// watched bus is closed or its transport keeps no statistics, the gauges
// are left out; any other Stats error is reported to the registry as an
// invalid ripple_queue_depth metric, which fails the scrape or is logged depending on the registry's
// error handling (Handler continues and logs).
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	bus := m.watched()
	if bus != nil {
		m.initHandlers(bus)
	}
	m.published.Collect(ch)
	m.failed.Collect(ch)
	m.handled.Collect(ch)
	m.duration.Collect(ch)
	m.latency.Collect(ch)
	if bus != nil {
		m.collectDepth(bus, ch)
	}
}

func (m *Metrics) collectDepth(bus *ripple.Bus, ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), m.statsTimeout)
	defer cancel()
	stats, err := bus.Stats(ctx)
	switch {
	case err == nil:
	case errors.Is(err, ripple.ErrClosed), errors.Is(err, ripple.ErrNotSupported):
		return
	default:
		if ctx.Err() != nil {
			err = fmt.Errorf("bus.Stats took longer than %s (observe.StatsTimeout): %w", m.statsTimeout, err)
		}
		ch <- prometheus.NewInvalidMetric(m.depth, err)
		return
	}
	for _, s := range stats {
		for _, v := range []struct {
			state string
			n     int64
		}{
			{StateWaiting, s.Waiting},
			{StateActive, s.Active},
			{StateDelayed, s.Delayed},
			{StateDead, s.Dead},
		} {
			ch <- prometheus.MustNewConstMetric(m.depth, prometheus.GaugeValue, float64(v.n), s.Handler, v.state)
		}
		ch <- prometheus.MustNewConstMetric(m.oldest, prometheus.GaugeValue, s.OldestWaiting.Seconds(), s.Handler)
	}
}

// Handler serves m's metrics, and only those, in the Prometheus exposition
// format. To serve them beside other metrics, register m on your own
// registry (prometheus.MustRegister(m)) and serve that registry with
// promhttp instead. A failed queue-depth read is logged through the
// handler's error log and the other metrics are still served.
func (m *Metrics) Handler() http.Handler {
	m.regOnce.Do(func() {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(m)
		m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	})
	return m.handler
}
