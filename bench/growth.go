package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ripplehq/ripple"
)

// The storage scenarios, which only Ripple's file-backed (sqlite) systems
// run. They are not part of "all": each handles a million events by
// default and takes minutes, so they run when named in -scenarios.
const (
	// Growth measures how fast one handler drains the front of a backlog
	// of Config.Backlogs events, for each backlog size, and the bytes on
	// disk per waiting event.
	Growth Scenario = "growth"
	// Bounded publishes Config.BoundedN events to one running handler and
	// samples the database file's size as they are handled, with the
	// default retention and then with a short one.
	Bounded Scenario = "bounded"
)

// StorageScenarios lists the scenarios that ParseScenarios accepts besides
// AllScenarios, in run order.
var StorageScenarios = []Scenario{Growth, Bounded}

// Defaults of the storage scenarios.
const (
	DefaultDrained           = 20_000
	DefaultBacklogPublishers = 64
	DefaultBoundedN          = 1_000_000
	DefaultBoundedEvery      = 100_000
	DefaultShortRetention    = 10 * time.Second
	// storageWait bounds each wait for handlers in the storage scenarios
	// when Config.Drain is shorter.
	storageWait = 10 * time.Minute
)

// DefaultBacklogs are the backlog sizes of the growth scenario.
var DefaultBacklogs = []int{10_000, 1_000_000}

// sqlitePath returns the database file of a Ripple system's instance in
// dir, and false for a system that keeps no SQLite file.
func sqlitePath(s System, dir string) (string, bool) {
	if s.BusURL == nil {
		return "", false
	}
	rest, ok := strings.CutPrefix(s.BusURL(dir), "sqlite://")
	if !ok {
		return "", false
	}
	path, _, _ := strings.Cut(rest, "?")
	p, err := url.PathUnescape(path)
	if err != nil {
		return "", false
	}
	return p, true
}

// FileSizes are the sizes in bytes of a SQLite database's files.
type FileSizes struct {
	DB, WAL, SHM int64
}

// Total is the sum of the three files.
func (f FileSizes) Total() int64 { return f.DB + f.WAL + f.SHM }

func statFiles(path string) FileSizes {
	size := func(p string) int64 {
		st, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	return FileSizes{DB: size(path), WAL: size(path + "-wal"), SHM: size(path + "-shm")}
}

// GrowthPoint is the growth scenario's measurement for one backlog size.
type GrowthPoint struct {
	// Backlog is how many events waited for the handler when it started.
	Backlog int
	// Publish is how long publishing the backlog took (not part of the
	// rate).
	Publish time.Duration
	// Files are the database's files once the backlog was published, with
	// the bus still open.
	Files FileSizes
	// BytesPerEvent is Files.Total() divided by Backlog.
	BytesPerEvent float64
	// Handled is how many events the timed part handled: the first ones of
	// the backlog.
	Handled int64
	// Elapsed runs from the call to Start until the handler had counted
	// Handled events.
	Elapsed time.Duration
	// PerSec is Handled divided by Elapsed.
	PerSec float64
	// CPU is the process's CPU time within Elapsed, zero where it cannot
	// be read.
	CPU time.Duration
}

// GrowthResult is the outcome of the growth scenario on one system.
type GrowthResult struct {
	// Points holds one measurement per backlog size, smallest first.
	Points []GrowthPoint
	// Ratio is the rate with the largest backlog divided by the rate with
	// the smallest.
	Ratio float64
}

// BoundedSample is the database's size once a number of events were
// handled.
type BoundedSample struct {
	Handled int64
	At      time.Duration
	Files   FileSizes
}

// BoundedRun is one run of the bounded scenario.
type BoundedRun struct {
	// Retention describes the bus's retention options.
	Retention string
	// Events is how many events were published and handled.
	Events int64
	// Elapsed runs from the first publish to the last handled event, and
	// PerSec is Events divided by it.
	Elapsed time.Duration
	PerSec  float64
	// Samples holds the sizes after every Config.BoundedEvery handled
	// events.
	Samples []BoundedSample
	// Max is the largest total size seen, in the samples and in a check
	// every 100 ms.
	Max int64
	// Final is the size once every event was handled, with the bus open;
	// Closed is the size after the bus closed.
	Final, Closed FileSizes
	// BytesPerEvent is Final.Total() divided by Events.
	BytesPerEvent float64
	// Completed is the completed deliveries the handler retained at the
	// end, from Stats.
	Completed int64
	// Note flags a run that did not go as planned.
	Note string
}

// BoundedResult is the outcome of the bounded scenario on one system: the
// run with the default retention, then the one with a short retention.
type BoundedResult struct {
	Runs []BoundedRun
}

// backlogSizes returns cfg's backlog sizes, sorted.
func (c Config) backlogSizes() []int {
	b := slices.Clone(c.Backlogs)
	if len(b) == 0 {
		b = slices.Clone(DefaultBacklogs)
	}
	slices.Sort(b)
	return slices.Compact(b)
}

// drained is how many events the growth scenario handles per backlog: the
// same for every size, so that only the backlog differs.
func (c Config) drained() int64 {
	return int64(min(c.Drained, c.backlogSizes()[0]))
}

func (c Config) storageWait() time.Duration {
	return max(c.Drain, storageWait)
}

// openStorageBus opens a bus on the system's URL in dir with opts.
func openStorageBus(ctx context.Context, s System, dir string, opts ...ripple.Option) (*ripple.Bus, error) {
	return ripple.Open(ctx, s.BusURL(dir), append([]ripple.Option{quietLogger()}, opts...)...)
}

// onCounting registers the e2e scenarios' handler shape on bus: one
// handler named bench-counter-1 on EventType at HandlerConcurrency, calling
// h once per event.
func onCounting(bus *ripple.Bus, h HandleFunc) error {
	return bus.On(EventType, "bench-counter-1", func(_ context.Context, e ripple.Event) error {
		h(e.Data)
		return nil
	}, ripple.Concurrency(HandlerConcurrency))
}

// publishMany publishes n events on bus from pubs goroutines, without a
// time cap, and returns how long that took.
func publishMany(ctx context.Context, bus *ripple.Bus, pubs int, n int64) (time.Duration, error) {
	var (
		next     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	now := time.Now()
	start := now
	for range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
				if _, err := bus.Publish(ctx, EventType, json.RawMessage(NewPayload(i, now))); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("publish event %d: %w", i, err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// runGrowth runs the growth scenario. For each backlog size, in a fresh
// file: a first bus registers and starts the handler, which creates its
// subscription (an event published before a handler's subscription exists
// is never delivered to it), and closes; a second bus publishes the
// backlog from many publishers with no handler running, measures the
// files, checks with Stats that the backlog waits for the handler, then
// registers the same handler and starts it. The timed part runs from Start
// until the handler has counted the first events of the backlog.
func runGrowth(ctx context.Context, s System, cfg Config) Measurement {
	res := &GrowthResult{}
	for _, backlog := range cfg.backlogSizes() {
		p, err := growthOnce(ctx, s, cfg, backlog)
		if err != nil {
			return Measurement{Err: fmt.Errorf("backlog %d: %w", backlog, err)}
		}
		res.Points = append(res.Points, p)
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "%-22s %-8s %s\n", s.Name, Growth, p)
		}
	}
	first, last := res.Points[0], res.Points[len(res.Points)-1]
	if first.PerSec > 0 {
		res.Ratio = last.PerSec / first.PerSec
	}
	return Measurement{Events: last.Handled, Elapsed: last.Elapsed, PerSec: last.PerSec, CPU: last.CPU, Growth: res}
}

// String formats one backlog's measurement for progress output.
func (p GrowthPoint) String() string {
	s := fmt.Sprintf("%d waiting (published in %v, %.0f bytes/event on disk): first %d handled in %v, %.0f/s",
		p.Backlog, p.Publish.Round(time.Millisecond), p.BytesPerEvent, p.Handled, p.Elapsed.Round(time.Millisecond), p.PerSec)
	if p.CPU > 0 && p.Handled > 0 {
		s += fmt.Sprintf(", %.2f µs CPU per event", float64(p.CPU)/float64(p.Handled)/float64(time.Microsecond))
	}
	return s
}

func growthOnce(ctx context.Context, s System, cfg Config, backlog int) (p GrowthPoint, err error) {
	dir, err := os.MkdirTemp("", "ripple-bench-growth-*")
	if err != nil {
		return p, err
	}
	defer os.RemoveAll(dir)
	path, _ := sqlitePath(s, dir)
	k := &sink{done: make(chan struct{}, 1)}

	// Create the handler's subscription before anything is published.
	sub, err := openStorageBus(ctx, s, dir)
	if err != nil {
		return p, fmt.Errorf("open: %w", err)
	}
	err = onCounting(sub, k.handle)
	if err == nil {
		err = sub.Start(ctx)
	}
	if err = errors.Join(err, sub.Close()); err != nil {
		return p, fmt.Errorf("subscribe: %w", err)
	}

	bus, err := openStorageBus(ctx, s, dir)
	if err != nil {
		return p, fmt.Errorf("open: %w", err)
	}
	defer func() {
		if cerr := bus.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close: %w", cerr)
		}
	}()
	p.Backlog = backlog
	if p.Publish, err = publishMany(ctx, bus, cfg.BacklogPublishers, int64(backlog)); err != nil {
		return p, err
	}
	p.Files = statFiles(path)
	p.BytesPerEvent = float64(p.Files.Total()) / float64(backlog)
	if err := onCounting(bus, k.handle); err != nil {
		return p, err
	}
	stats, err := bus.Stats(ctx)
	if err != nil {
		return p, fmt.Errorf("stats: %w", err)
	}
	i := slices.IndexFunc(stats, func(h ripple.HandlerStats) bool { return h.Handler == "bench-counter-1" })
	if i < 0 || stats[i].Waiting != int64(backlog) {
		return p, fmt.Errorf("before the handler starts, Stats reports %+v; want %d events waiting for bench-counter-1", stats, backlog)
	}
	if k.handled.Load() != 0 {
		return p, fmt.Errorf("the handler counted %d events before the backlog was published", k.handled.Load())
	}

	want := cfg.drained()
	runtime.GC()
	start, cpu0 := time.Now(), processCPU()
	if err := bus.Start(ctx); err != nil {
		return p, fmt.Errorf("start: %w", err)
	}
	ok := k.wait(want, cfg.storageWait())
	p.Elapsed = time.Since(start)
	if cpu0 > 0 {
		p.CPU = processCPU() - cpu0
	}
	p.Handled = k.handled.Load()
	if !ok {
		return p, fmt.Errorf("handled %d of the first %d events in %v", p.Handled, want, cfg.storageWait())
	}
	p.PerSec = float64(p.Handled) / p.Elapsed.Seconds()
	return p, nil
}

// runBounded runs the bounded scenario: with the default retention, then
// with DedupWindow and KeepCompleted set to cfg.ShortRetention.
func runBounded(ctx context.Context, s System, cfg Config) Measurement {
	res := &BoundedResult{}
	short := cfg.ShortRetention
	for _, r := range []struct {
		desc string
		opts []ripple.Option
	}{
		{"default (no retention options)", nil},
		{fmt.Sprintf("DedupWindow(%v), KeepCompleted(1000, %v)", short, short),
			[]ripple.Option{ripple.DedupWindow(short), ripple.KeepCompleted(1000, short)}},
	} {
		run, err := boundedOnce(ctx, s, cfg, r.opts...)
		run.Retention = r.desc
		if err != nil {
			return Measurement{Err: fmt.Errorf("retention %s: %w", r.desc, err)}
		}
		res.Runs = append(res.Runs, run)
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "%-22s %-8s %s\n", s.Name, Bounded, run)
		}
	}
	last := res.Runs[0]
	return Measurement{Events: last.Events, Elapsed: last.Elapsed, PerSec: last.PerSec, Bounded: res}
}

// String formats one bounded run for progress output.
func (r BoundedRun) String() string {
	s := fmt.Sprintf("retention %s: %d events in %v (%.0f/s), max %s, final %s (%.0f bytes/event), %s after close, %d completed retained",
		r.Retention, r.Events, r.Elapsed.Round(time.Millisecond), r.PerSec, mb(r.Max), mb(r.Final.Total()), r.BytesPerEvent, mb(r.Closed.Total()), r.Completed)
	if r.Note != "" {
		s += " (" + r.Note + ")"
	}
	return s
}

func boundedOnce(ctx context.Context, s System, cfg Config, opts ...ripple.Option) (r BoundedRun, err error) {
	dir, err := os.MkdirTemp("", "ripple-bench-bounded-*")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	path, _ := sqlitePath(s, dir)
	n, every := int64(cfg.BoundedN), int64(cfg.BoundedEvery)

	var (
		mu      sync.Mutex
		samples []BoundedSample
		maxSize atomic.Int64
		start   time.Time
	)
	observe := func(f FileSizes) {
		for t := f.Total(); ; {
			m := maxSize.Load()
			if t <= m || maxSize.CompareAndSwap(m, t) {
				return
			}
		}
	}
	k := &sink{done: make(chan struct{}, 1)}
	var handled atomic.Int64
	count := func(data []byte) {
		if c := handled.Add(1); c%every == 0 {
			f := statFiles(path)
			observe(f)
			mu.Lock()
			samples = append(samples, BoundedSample{Handled: c, At: time.Since(start), Files: f})
			mu.Unlock()
		}
		k.handle(data)
	}

	bus, err := openStorageBus(ctx, s, dir, opts...)
	if err != nil {
		return r, fmt.Errorf("open: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = bus.Close()
		}
	}()
	if err := onCounting(bus, count); err != nil {
		return r, err
	}
	start = time.Now()
	if err := bus.Start(ctx); err != nil {
		return r, fmt.Errorf("start: %w", err)
	}

	stop := make(chan struct{})
	var tick sync.WaitGroup
	tick.Add(1)
	go func() {
		defer tick.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				observe(statFiles(path))
			}
		}
	}()
	_, perr := publishMany(ctx, bus, cfg.Publishers, n)
	ok := perr == nil && k.wait(n, cfg.storageWait())
	r.Elapsed = time.Since(start)
	close(stop)
	tick.Wait()
	if perr != nil {
		return r, perr
	}
	r.Events = k.handled.Load()
	if !ok {
		r.Note = fmt.Sprintf("drain timed out: %d of %d handled in %v", r.Events, n, cfg.storageWait())
	}
	r.PerSec = float64(r.Events) / r.Elapsed.Seconds()
	r.Final = statFiles(path)
	observe(r.Final)
	r.BytesPerEvent = float64(r.Final.Total()) / float64(r.Events)
	if stats, err := bus.Stats(ctx); err == nil {
		for _, h := range stats {
			r.Completed += h.Completed
		}
	} else {
		r.Note = strings.TrimPrefix(r.Note+"; ", "; ") + "stats: " + err.Error()
	}
	closed = true
	if err := bus.Close(); err != nil {
		return r, fmt.Errorf("close: %w", err)
	}
	r.Closed = statFiles(path)
	mu.Lock()
	r.Samples = slices.Clone(samples)
	mu.Unlock()
	r.Max = maxSize.Load()
	return r, nil
}

// mb formats a size in bytes as megabytes (10^6 bytes).
func mb(b int64) string {
	return fmt.Sprintf("%.1f MB", float64(b)/1e6)
}

// WriteGrowth writes the growth scenario's results as a markdown table:
// one row per system and backlog size. It writes nothing when no result
// has a growth measurement.
func WriteGrowth(w io.Writer, results []Result) {
	var b strings.Builder
	for _, r := range results {
		m, ok := r.By[Growth]
		if !ok {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("| system | waiting | publish of the backlog (untimed) | db + wal + shm after publishing | bytes on disk per waiting event | handled (the front of the backlog) | drain (ev/s) | CPU per event | rate / rate with the smallest backlog |\n")
			b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		}
		if m.Err != nil {
			fmt.Fprintf(&b, "| %s | error: %v | | | | | | | |\n", r.System.Name, m.Err)
			continue
		}
		for _, p := range m.Growth.Points {
			cpu := "—"
			if p.CPU > 0 {
				cpu = fmt.Sprintf("%.1f µs", float64(p.CPU)/float64(p.Handled)/float64(time.Microsecond))
			}
			fmt.Fprintf(&b, "| %s | %s | %v (%s/s) | %s + %s + %s | %.0f | %s | %s | %s | %.2f× |\n",
				r.System.Name, count(float64(p.Backlog)), p.Publish.Round(100*time.Millisecond), count(float64(p.Backlog)/p.Publish.Seconds()),
				mb(p.Files.DB), mb(p.Files.WAL), mb(p.Files.SHM), p.BytesPerEvent,
				count(float64(p.Handled)), count(p.PerSec), cpu, p.PerSec/m.Growth.Points[0].PerSec)
		}
	}
	_, _ = io.WriteString(w, b.String())
}

// WriteBounded writes the bounded scenario's results: for each system and
// retention, the file size samples and a summary row. It writes nothing
// when no result has a bounded measurement.
func WriteBounded(w io.Writer, results []Result) {
	var b strings.Builder
	for _, r := range results {
		m, ok := r.By[Bounded]
		if !ok {
			continue
		}
		if m.Err != nil {
			fmt.Fprintf(&b, "- %s: error: %v\n", r.System.Name, m.Err)
			continue
		}
		for _, run := range m.Bounded.Runs {
			fmt.Fprintf(&b, "\n%s, retention %s: %s events published by the publishers and handled in %v (%s/s end to end)\n\n",
				r.System.Name, run.Retention, count(float64(run.Events)), run.Elapsed.Round(100*time.Millisecond), count(run.PerSec))
			b.WriteString("| handled | at | db | wal | db + wal + shm |\n|---:|---:|---:|---:|---:|\n")
			for _, s := range run.Samples {
				fmt.Fprintf(&b, "| %s | %v | %s | %s | %s |\n", count(float64(s.Handled)), s.At.Round(100*time.Millisecond), mb(s.Files.DB), mb(s.Files.WAL), mb(s.Files.Total()))
			}
			fmt.Fprintf(&b, "\nmax %s; final %s (db %s, wal %s) = %.0f bytes per handled event; %s after Close; %s completed deliveries retained\n",
				mb(run.Max), mb(run.Final.Total()), mb(run.Final.DB), mb(run.Final.WAL), run.BytesPerEvent, mb(run.Closed.Total()), count(float64(run.Completed)))
			if run.Note != "" {
				fmt.Fprintf(&b, "\n* %s\n", run.Note)
			}
		}
	}
	_, _ = io.WriteString(w, b.String())
}

// checkStorage evaluates the sqlite storage targets on the growth and
// bounded results.
func checkStorage(results []Result) []Verdict {
	var out []Verdict
	for _, r := range results {
		if m, ok := r.Get(Growth); ok && len(m.Growth.Points) > 1 {
			first, last := m.Growth.Points[0], m.Growth.Points[len(m.Growth.Points)-1]
			out = append(out, Verdict{
				Target: fmt.Sprintf("drain with %s waiting within 20%% of the drain with %s waiting (%s)", count(float64(last.Backlog)), count(float64(first.Backlog)), r.System.Name),
				Measured: fmt.Sprintf("%s/s / %s/s = %.2f×; %.0f bytes on disk per waiting event at %s",
					count(last.PerSec), count(first.PerSec), m.Growth.Ratio, last.BytesPerEvent, count(float64(last.Backlog))),
				Pass: m.Growth.Ratio >= 0.8,
			})
		}
		if m, ok := r.Get(Bounded); ok {
			for _, run := range m.Bounded.Runs {
				half, ok := halfway(run)
				if !ok {
					continue
				}
				out = append(out, Verdict{
					Target: fmt.Sprintf("file bounded over %s handled events, retention %s (%s): final size ≤ 1.25× the size at half-way", count(float64(run.Events)), run.Retention, r.System.Name),
					Measured: fmt.Sprintf("%s at %s handled, %s at the end (%.2f×), max %s",
						mb(half.Files.Total()), count(float64(half.Handled)), mb(run.Final.Total()), float64(run.Final.Total())/float64(half.Files.Total()), mb(run.Max)),
					Pass: run.Note == "" && float64(run.Final.Total()) <= 1.25*float64(half.Files.Total()),
				})
			}
		}
	}
	return out
}

// halfway returns the sample closest to half of a run's events.
func halfway(run BoundedRun) (BoundedSample, bool) {
	var best BoundedSample
	found := false
	for _, s := range run.Samples {
		if !found || absInt(s.Handled-run.Events/2) < absInt(best.Handled-run.Events/2) {
			best, found = s, true
		}
	}
	return best, found && best.Files.Total() > 0 && best.Handled < run.Events
}

func absInt(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
