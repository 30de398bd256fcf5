package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario names one measurement.
type Scenario string

// The scenarios, in the order Run runs them for each system.
const (
	Pub1    Scenario = "pub1"    // publish throughput, one awaiting publisher
	Pub16   Scenario = "pub16"   // publish throughput, 16 concurrent publishers
	E2E1    Scenario = "e2e1"    // end-to-end throughput, one publisher
	E2E16   Scenario = "e2e16"   // end-to-end throughput, 16 publishers
	Fan5    Scenario = "fan5"    // e2e16 with five handlers (Ripple and fan-out peers)
	Latency Scenario = "latency" // publish-to-handler latency at a paced rate
)

// AllScenarios lists every scenario in run order.
var AllScenarios = []Scenario{Pub1, Pub16, E2E1, E2E16, Fan5, Latency}

// ParseScenarios parses a comma-separated list of scenario names, or "all"
// (AllScenarios; the StorageScenarios run only when named).
func ParseScenarios(list string) ([]Scenario, error) {
	if list == "" || list == "all" {
		return AllScenarios, nil
	}
	known := append(slices.Clone(AllScenarios), StorageScenarios...)
	var out []Scenario
	for _, s := range strings.Split(list, ",") {
		sc := Scenario(strings.TrimSpace(s))
		if !slices.Contains(known, sc) {
			names := make([]string, len(known))
			for i, a := range known {
				names[i] = string(a)
			}
			return nil, fmt.Errorf("unknown scenario %q; known scenarios: %s, or all (every scenario but %s and %s)", s, strings.Join(names, ", "), Growth, Bounded)
		}
		out = append(out, sc)
	}
	return out, nil
}

// Config sizes a run. The zero value of each field means its default.
type Config struct {
	// N caps the events of each throughput scenario. Default 100,000.
	N int
	// MaxPublish caps the time of each publish phase. Default 5 s.
	MaxPublish time.Duration
	// Drain bounds the wait for handlers to finish the published events.
	// Default 60 s.
	Drain time.Duration
	// Publishers is the number of concurrent publishers in pub16, e2e16
	// and fan5. Default 16.
	Publishers int
	// Rate is the paced publish rate of the latency scenario, in events
	// per second. Default 1,000.
	Rate int
	// LatencyFor is how long the latency scenario publishes. Default 4 s.
	LatencyFor time.Duration
	// Warmup is how many events each fresh instance handles before a
	// measurement starts. Default 200.
	Warmup int
	// Scenarios lists what to measure. Default: AllScenarios.
	Scenarios []Scenario
	// Progress, when set, receives one line per finished measurement.
	Progress io.Writer

	// Backlogs are the growth scenario's backlog sizes. Default
	// DefaultBacklogs (10,000 and 1,000,000).
	Backlogs []int
	// Drained is how many events the growth scenario handles from the
	// front of each backlog, capped at the smallest backlog so that every
	// size is measured on the same count. Default 20,000.
	Drained int
	// GrowthRounds is how many timed drains the growth scenario runs per
	// backlog size, each after topping the backlog up again; it reports
	// their median. Default 5.
	GrowthRounds int
	// BacklogPublishers is how many goroutines publish the growth
	// scenario's backlog. Default 64.
	BacklogPublishers int
	// BoundedN is how many events the bounded scenario publishes and
	// handles in each run. Default 1,000,000.
	BoundedN int
	// BoundedEvery is how many handled events separate two file size
	// samples of the bounded scenario. Default 100,000 (capped at
	// BoundedN).
	BoundedEvery int
	// BoundedMaxWaiting, when positive, makes the bounded scenario's
	// publishers wait while that many published events are not handled
	// yet, so that the file size shows retention rather than a backlog.
	// Default 0: publishers never wait.
	BoundedMaxWaiting int
	// ShortRetention is the DedupWindow and KeepCompleted age of the
	// bounded scenario's second run. Default 10 s.
	ShortRetention time.Duration
	// DrainProfile, when set, makes the growth scenario write a CPU
	// profile of each timed drain to DrainProfile-SYSTEM-BACKLOG.pprof.
	// The process must not be profiling already.
	DrainProfile string
}

func (c Config) withDefaults() Config {
	if c.N <= 0 {
		c.N = 100_000
	}
	if c.MaxPublish <= 0 {
		c.MaxPublish = 5 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 60 * time.Second
	}
	if c.Publishers <= 0 {
		c.Publishers = 16
	}
	if c.Rate <= 0 {
		c.Rate = 1000
	}
	if c.LatencyFor <= 0 {
		c.LatencyFor = 4 * time.Second
	}
	if c.Warmup <= 0 {
		c.Warmup = 200
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = AllScenarios
	}
	if c.Drained <= 0 {
		c.Drained = DefaultDrained
	}
	if c.GrowthRounds <= 0 {
		c.GrowthRounds = DefaultGrowthRounds
	}
	if c.BacklogPublishers <= 0 {
		c.BacklogPublishers = DefaultBacklogPublishers
	}
	if c.BoundedN <= 0 {
		c.BoundedN = DefaultBoundedN
	}
	if c.BoundedEvery <= 0 {
		c.BoundedEvery = DefaultBoundedEvery
	}
	c.BoundedEvery = min(c.BoundedEvery, c.BoundedN)
	if c.ShortRetention <= 0 {
		c.ShortRetention = DefaultShortRetention
	}
	return c
}

// Measurement is the outcome of one scenario on one system.
type Measurement struct {
	// Events is how many events were published (for fan5: events, not
	// deliveries).
	Events int64
	// Deliveries is how many handler calls the end-to-end scenarios
	// counted within Elapsed: Events times the number of handlers once
	// every event is handled.
	Deliveries int64
	// DeliveriesPerSec is Deliveries divided by Elapsed (end-to-end
	// scenarios).
	DeliveriesPerSec float64
	// CPU is the CPU time (user and system, every goroutine of the
	// process) spent within Elapsed in the end-to-end scenarios, zero
	// where it cannot be read. On a machine that other work shares, CPU
	// per delivery compares systems run one after the other better than
	// their rates, which depend on the CPU each one was given.
	CPU time.Duration
	// Elapsed is the measured time: the publish phase for pub1 and pub16,
	// first publish to last handled event for the end-to-end scenarios.
	Elapsed time.Duration
	// PerSec is Events divided by Elapsed.
	PerSec float64
	// P50 and P99 are publish-to-handler latencies (latency scenario).
	P50, P99 time.Duration
	// PubP50 and PubP99 are the latencies of the publish calls alone in
	// the latency scenario, from the pacer's hand-off to Publish's return:
	// the part of P50 and P99 spent before the event is stored.
	PubP50, PubP99 time.Duration
	// Note flags a measurement that did not run as planned, such as a
	// drain that timed out.
	Note string
	// Err is set when the scenario failed.
	Err error
	// Growth holds the growth scenario's measurements (Events, Elapsed
	// and PerSec then describe its largest backlog).
	Growth *GrowthResult
	// Bounded holds the bounded scenario's runs (Events, Elapsed and
	// PerSec then describe the run with the default retention).
	Bounded *BoundedResult
}

// Result holds every measurement of one system.
type Result struct {
	System System
	// By maps each measured scenario to its measurement; scenarios that do
	// not apply to the system are absent.
	By map[Scenario]Measurement
}

// Get returns the measurement of sc and whether it exists without error.
func (r Result) Get(sc Scenario) (Measurement, bool) {
	m, ok := r.By[sc]
	return m, ok && m.Err == nil
}

// Applies reports whether scenario sc is measured for system s.
func Applies(s System, sc Scenario) bool {
	switch sc {
	case Pub1, Pub16:
		return true
	case Growth, Bounded:
		_, ok := sqlitePath(s, "dir")
		return ok
	case Fan5:
		return s.Ripple || s.FanOut
	default:
		return s.Consumes
	}
}

// Run measures every system in turn and returns one result per system.
func Run(ctx context.Context, systems []System, cfg Config) []Result {
	cfg = cfg.withDefaults()
	var out []Result
	for _, s := range systems {
		r := Result{System: s, By: map[Scenario]Measurement{}}
		for _, sc := range cfg.Scenarios {
			if !Applies(s, sc) || ctx.Err() != nil {
				continue
			}
			// Start each measurement with a collected heap so that garbage
			// left by the previous one is not charged to this one.
			runtime.GC()
			m := runScenario(ctx, s, sc, cfg)
			r.By[sc] = m
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "%-22s %-8s %s\n", s.Name, sc, m)
			}
		}
		out = append(out, r)
	}
	return out
}

// String formats a measurement for progress output.
func (m Measurement) String() string {
	if m.Err != nil {
		return "error: " + m.Err.Error()
	}
	if m.Growth != nil && len(m.Growth.Points) > 0 {
		return fmt.Sprintf("drain rate with the largest backlog / with the smallest = %.2f×", m.Growth.Ratio)
	}
	if m.Bounded != nil {
		var parts []string
		for _, r := range m.Bounded.Runs {
			parts = append(parts, fmt.Sprintf("%s: max %s, final %s", r.Retention, mb(r.Max), mb(r.Final.Total())))
		}
		return strings.Join(parts, "; ")
	}
	s := fmt.Sprintf("%d events in %v: %.0f/s", m.Events, m.Elapsed.Round(time.Millisecond), m.PerSec)
	if m.Deliveries > 0 && m.CPU > 0 {
		s += fmt.Sprintf(", %d deliveries, %s CPU per delivery", m.Deliveries, perDelivery(m))
	}
	if m.P99 > 0 {
		s = fmt.Sprintf("%d events, p50 %v, p99 %v", m.Events, m.P50.Round(time.Microsecond), m.P99.Round(time.Microsecond))
		if m.PubP99 > 0 {
			s += fmt.Sprintf(" (publish call alone: p50 %v, p99 %v)", m.PubP50.Round(time.Microsecond), m.PubP99.Round(time.Microsecond))
		}
	}
	if m.Note != "" {
		s += " (" + m.Note + ")"
	}
	return s
}

func runScenario(ctx context.Context, s System, sc Scenario, cfg Config) (m Measurement) {
	switch sc {
	case Growth:
		return runGrowth(ctx, s, cfg)
	case Bounded:
		return runBounded(ctx, s, cfg)
	}
	if s.Measure != nil {
		return s.Measure(ctx, sc, cfg)
	}
	dir, err := os.MkdirTemp("", "ripple-bench-*")
	if err != nil {
		return Measurement{Err: err}
	}
	defer os.RemoveAll(dir)

	handlers := 1
	if sc == Fan5 {
		handlers = 5
	}
	k := &sink{done: make(chan struct{}, 1)}
	inst, err := s.Open(ctx, dir, handlers, k.handle)
	if err != nil {
		return Measurement{Err: fmt.Errorf("open: %w", err)}
	}
	defer func() {
		if err := inst.Close(); err != nil && m.Err == nil {
			m.Err = fmt.Errorf("close: %w", err)
		}
	}()

	// Warm up: the first events pay for schema caches, goroutine pools and
	// page faults, which no steady-state number should include.
	warm := int64(cfg.Warmup)
	payloads := makePayloads(max(int64(cfg.N), warm))
	if _, _, err := publishPhase(ctx, inst, 1, payloads[:warm], cfg.MaxPublish); err != nil {
		return Measurement{Err: fmt.Errorf("warm-up: %w", err)}
	}
	if s.Consumes {
		if !k.wait(warm*int64(handlers), cfg.Drain) {
			return Measurement{Err: fmt.Errorf("warm-up: handled %d of %d events in %v", k.handled.Load(), warm*int64(handlers), cfg.Drain)}
		}
	}
	base := k.handled.Load()

	switch sc {
	case Pub1, Pub16:
		pubs := 1
		if sc == Pub16 {
			pubs = cfg.Publishers
		}
		n, elapsed, err := publishPhase(ctx, inst, pubs, payloads[:cfg.N], cfg.MaxPublish)
		return throughput(n, elapsed, err)

	case E2E1, E2E16, Fan5:
		pubs := 1
		if sc != E2E1 {
			pubs = cfg.Publishers
		}
		start, cpu0 := time.Now(), processCPU()
		n, _, err := publishPhase(ctx, inst, pubs, payloads[:cfg.N], cfg.MaxPublish)
		if err != nil {
			return Measurement{Err: err}
		}
		want := base + n*int64(handlers)
		ok := k.wait(want, cfg.Drain)
		m := throughput(n, time.Since(start), nil)
		if cpu0 > 0 {
			m.CPU = processCPU() - cpu0
		}
		m.Deliveries = k.handled.Load() - base
		m.DeliveriesPerSec = float64(m.Deliveries) / m.Elapsed.Seconds()
		if !ok {
			m.Note = fmt.Sprintf("drain timed out: %d of %d deliveries", k.handled.Load()-base, want-base)
		}
		return m

	case Latency:
		return latencyPhase(ctx, inst, k, base, cfg)
	}
	return Measurement{Err: fmt.Errorf("unknown scenario %q", sc)}
}

func throughput(n int64, elapsed time.Duration, err error) Measurement {
	if err != nil {
		return Measurement{Err: err}
	}
	if elapsed <= 0 {
		elapsed = time.Nanosecond
	}
	return Measurement{Events: n, Elapsed: elapsed, PerSec: float64(n) / elapsed.Seconds()}
}

func makePayloads(n int64) [][]byte {
	out := make([][]byte, n)
	now := time.Now()
	for i := range out {
		out[i] = NewPayload(int64(i), now)
	}
	return out
}

// publishPhase publishes payloads from pubs goroutines, each awaiting its
// publish before taking the next payload, until every payload is published
// or limit has passed. It returns how many were published and how long
// that took.
func publishPhase(ctx context.Context, inst Instance, pubs int, payloads [][]byte, limit time.Duration) (int64, time.Duration, error) {
	var (
		next      atomic.Int64
		published atomic.Int64
		firstErr  error
		errOnce   sync.Once
		wg        sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(limit)
	for range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(payloads)) || time.Now().After(deadline) {
					return
				}
				if err := inst.Publish(ctx, payloads[i]); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("publish: %w", err) })
					return
				}
				published.Add(1)
			}
		}()
	}
	wg.Wait()
	return published.Load(), time.Since(start), firstErr
}

// latencyPhase publishes at cfg.Rate for cfg.LatencyFor. A pacer hands each
// event, stamped with the time it hands it over, to a pool of publishers,
// so a system whose publish is slower than the pace delays the events
// queued behind it and that delay counts in their latency.
func latencyPhase(ctx context.Context, inst Instance, k *sink, base int64, cfg Config) Measurement {
	total := int64(float64(cfg.Rate) * cfg.LatencyFor.Seconds())
	interval := time.Second / time.Duration(cfg.Rate)
	k.startRecording(int(total))

	queue := make(chan []byte, total)
	var (
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
		pubMu    sync.Mutex
		pubLat   = make([]time.Duration, 0, total)
	)
	for range cfg.Publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range queue {
				if err := inst.Publish(ctx, p); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("publish: %w", err) })
				}
				if sent, ok := SentTime(p); ok {
					d := time.Since(sent)
					pubMu.Lock()
					pubLat = append(pubLat, d)
					pubMu.Unlock()
				}
			}
		}()
	}
	start := time.Now()
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		queue <- NewPayload(i, time.Now())
	}
	close(queue)
	wg.Wait()
	publishSpan := time.Since(start)
	if firstErr != nil {
		return Measurement{Err: firstErr}
	}
	ok := k.wait(base+total, cfg.Drain)
	lat := k.latencies()
	if len(lat) == 0 {
		return Measurement{Err: errors.New("no event was handled")}
	}
	slices.Sort(lat)
	m := Measurement{
		Events:  int64(len(lat)),
		Elapsed: publishSpan,
		PerSec:  float64(total) / publishSpan.Seconds(),
		P50:     percentile(lat, 50),
		P99:     percentile(lat, 99),
	}
	if len(pubLat) > 0 {
		slices.Sort(pubLat)
		m.PubP50, m.PubP99 = percentile(pubLat, 50), percentile(pubLat, 99)
	}
	if !ok {
		m.Note = fmt.Sprintf("drain timed out: %d of %d handled", len(lat), total)
	}
	if behind := publishSpan - cfg.LatencyFor; behind > cfg.LatencyFor/10 {
		m.Note = strings.TrimPrefix(m.Note+"; ", "; ") + fmt.Sprintf("publishing fell behind the pace by %v", behind.Round(time.Millisecond))
	}
	return m
}

func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

// sink is the counting handler shared by all of an instance's handlers.
type sink struct {
	handled atomic.Int64
	target  atomic.Int64
	done    chan struct{}
	mu      sync.Mutex
	waitMu  sync.Mutex

	recording atomic.Bool
	lat       []time.Duration
}

func (k *sink) handle(data []byte) {
	if k.recording.Load() {
		if sent, ok := SentTime(data); ok {
			d := time.Since(sent)
			k.mu.Lock()
			k.lat = append(k.lat, d)
			k.mu.Unlock()
		}
	}
	n := k.handled.Add(1)
	if t := k.target.Load(); t > 0 && n >= t {
		k.signal()
	}
}

func (k *sink) signal() {
	select {
	case k.done <- struct{}{}:
	default:
	}
}

// wait blocks until want events have been handled in total or timeout
// passes, and reports whether they were.
func (k *sink) wait(want int64, timeout time.Duration) bool {
	k.waitMu.Lock()
	defer k.waitMu.Unlock()
	// A signal left over from an earlier target must not end this wait.
	select {
	case <-k.done:
	default:
	}
	k.target.Store(want)
	defer k.target.Store(0)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for k.handled.Load() < want {
		select {
		case <-k.done:
		case <-timer.C:
			return k.handled.Load() >= want
		}
	}
	return true
}

func (k *sink) startRecording(capacity int) {
	k.mu.Lock()
	k.lat = make([]time.Duration, 0, capacity)
	k.mu.Unlock()
	k.recording.Store(true)
}

func (k *sink) latencies() []time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.lat)
}

// perDelivery formats a measurement's CPU time per delivery in
// microseconds.
func perDelivery(m Measurement) string {
	return fmt.Sprintf("%.2f µs", float64(m.CPU)/float64(m.Deliveries)/float64(time.Microsecond))
}
