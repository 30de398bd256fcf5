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
	"runtime/pprof"
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
	DefaultGrowthRounds      = 5
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
	if s.SQLiteURL == nil {
		return "", false
	}
	rest, ok := strings.CutPrefix(s.SQLiteURL(dir), "sqlite://")
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
	// Handled is how many events each round's timed part handled: the
	// first ones of the backlog.
	Handled int64
	// Rounds holds the timed drains, each from a backlog topped up to
	// Backlog waiting events.
	Rounds []GrowthRound
	// PerSec is the median of the rounds' rates.
	PerSec float64
	// CPUPerEvent is the median of the rounds' CPU time per event, zero
	// where it cannot be read. On a machine that other work shares, it
	// compares backlog sizes better than the rates do.
	CPUPerEvent time.Duration
}

// GrowthRound is one timed drain of the growth scenario.
type GrowthRound struct {
	// Handled is how many events were timed.
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
	// the smallest (medians of the rounds).
	Ratio float64
	// CPURatio is the CPU time per event with the largest backlog divided
	// by that with the smallest, zero where it cannot be read.
	CPURatio float64
}

// BoundedSample is the database's size once a number of events were
// handled.
type BoundedSample struct {
	// Handled and Published are the events handled and published by then.
	Handled, Published int64
	// At is the time since the handler started.
	At    time.Duration
	Files FileSizes
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
	// MaxWaiting is Config.BoundedMaxWaiting, zero when publishers did not
	// wait.
	MaxWaiting int
	// PeakWaiting is the most events seen published and not handled yet
	// (at the samples and the 100 ms checks).
	PeakWaiting int64
	// PublishedAt is how many events were handled when the last publish
	// returned: the file grew with the backlog until then.
	PublishedAt int64
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
	return ripple.Open(ctx, s.SQLiteURL(dir), append([]ripple.Option{quietLogger()}, opts...)...)
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
// time cap, and returns how long that took. published, when not nil,
// counts the events published; gate, when not nil, is called before each
// publish and may hold it back.
func publishMany(ctx context.Context, bus *ripple.Bus, pubs int, n int64, published *atomic.Int64, gate func()) (time.Duration, error) {
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
				if gate != nil {
					gate()
				}
				if _, err := bus.Publish(ctx, EventType, json.RawMessage(NewPayload(i, now))); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("publish event %d: %w", i, err) })
					return
				}
				if published != nil {
					published.Add(1)
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
	if first.CPUPerEvent > 0 {
		res.CPURatio = float64(last.CPUPerEvent) / float64(first.CPUPerEvent)
	}
	return Measurement{Events: last.Handled, PerSec: last.PerSec, Growth: res}
}

// String formats one backlog's measurement for progress output.
func (p GrowthPoint) String() string {
	s := fmt.Sprintf("%d waiting (published in %v, %.0f bytes/event on disk): first %d handled in %d rounds, median %.0f/s (%s)",
		p.Backlog, p.Publish.Round(time.Millisecond), p.BytesPerEvent, p.Handled, len(p.Rounds), p.PerSec, p.rateRange())
	if p.CPUPerEvent > 0 {
		s += fmt.Sprintf(", median %.2f µs CPU per event", us(p.CPUPerEvent))
	}
	return s
}

// rateRange formats the slowest and fastest round's rates.
func (p GrowthPoint) rateRange() string {
	if len(p.Rounds) == 0 {
		return "no round"
	}
	lo, hi := p.Rounds[0].PerSec, p.Rounds[0].PerSec
	for _, r := range p.Rounds {
		lo, hi = min(lo, r.PerSec), max(hi, r.PerSec)
	}
	return count(lo) + "–" + count(hi)
}

func us(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond)
}

func growthOnce(ctx context.Context, s System, cfg Config, backlog int) (p GrowthPoint, err error) {
	dir, err := os.MkdirTemp("", "ripple-bench-growth-*")
	if err != nil {
		return p, err
	}
	defer os.RemoveAll(dir)
	path, _ := sqlitePath(s, dir)

	// Create the handler's subscription before anything is published.
	sub, err := openStorageBus(ctx, s, dir)
	if err != nil {
		return p, fmt.Errorf("open: %w", err)
	}
	err = onCounting(sub, func([]byte) {})
	if err == nil {
		err = sub.Start(ctx)
	}
	if err = errors.Join(err, sub.Close()); err != nil {
		return p, fmt.Errorf("subscribe: %w", err)
	}

	p.Backlog = backlog
	p.Handled = cfg.drained()
	for round := range cfg.GrowthRounds {
		r, err := growthRound(ctx, s, cfg, dir, path, round, &p)
		if err != nil {
			return p, fmt.Errorf("round %d: %w", round+1, err)
		}
		p.Rounds = append(p.Rounds, r)
	}
	rates := make([]float64, len(p.Rounds))
	cpus := make([]time.Duration, len(p.Rounds))
	for i, r := range p.Rounds {
		rates[i] = r.PerSec
		if r.CPU > 0 {
			cpus[i] = r.CPU / time.Duration(r.Handled)
		}
	}
	p.PerSec = median(rates)
	p.CPUPerEvent = median(cpus)
	return p, nil
}

// growthRound tops the backlog up to p.Backlog waiting events (the whole
// backlog in the first round), checks with Stats that they wait for the
// handler, then starts the handler on a fresh bus and times it until it
// has counted p.Handled events, and closes the bus.
func growthRound(ctx context.Context, s System, cfg Config, dir, path string, round int, p *GrowthPoint) (r GrowthRound, err error) {
	bus, err := openStorageBus(ctx, s, dir)
	if err != nil {
		return r, fmt.Errorf("open: %w", err)
	}
	defer bus.Close() // a second Close after the one below does nothing
	waiting := func() (int64, error) {
		stats, err := bus.Stats(ctx)
		if err != nil {
			return 0, fmt.Errorf("stats: %w", err)
		}
		for _, h := range stats {
			if h.Handler == "bench-counter-1" {
				return h.Waiting, nil
			}
		}
		return 0, fmt.Errorf("stats reports no handler bench-counter-1: %+v", stats)
	}
	w, err := waiting()
	if err != nil {
		return r, err
	}
	if top := int64(p.Backlog) - w; top > 0 {
		took, err := publishMany(ctx, bus, cfg.BacklogPublishers, top, nil, nil)
		if err != nil {
			return r, err
		}
		if round == 0 {
			p.Publish = took
			p.Files = statFiles(path)
			p.BytesPerEvent = float64(p.Files.Total()) / float64(p.Backlog)
		}
	}
	if w, err = waiting(); err != nil {
		return r, err
	}
	if w != int64(p.Backlog) {
		return r, fmt.Errorf("before the handler starts, %d events wait for it; want %d", w, p.Backlog)
	}
	k := &sink{done: make(chan struct{}, 1)}
	if err := onCounting(bus, k.handle); err != nil {
		return r, err
	}

	stopProfile := func() error { return nil }
	if cfg.DrainProfile != "" {
		name := fmt.Sprintf("%s-%s-%d-r%d.pprof", cfg.DrainProfile, s.Name, p.Backlog, round+1)
		if stopProfile, err = startProfile(name); err != nil {
			return r, err
		}
	}
	runtime.GC()
	start, cpu0 := time.Now(), processCPU()
	if err := bus.Start(ctx); err != nil {
		_ = stopProfile()
		return r, fmt.Errorf("start: %w", err)
	}
	ok := k.wait(p.Handled, cfg.storageWait())
	r.Elapsed = time.Since(start)
	if cpu0 > 0 {
		r.CPU = processCPU() - cpu0
	}
	if err := stopProfile(); err != nil {
		return r, err
	}
	r.Handled = k.handled.Load()
	if !ok {
		return r, fmt.Errorf("handled %d of the first %d events in %v", r.Handled, p.Handled, cfg.storageWait())
	}
	// Events handled after the count was reached (the handler's in-flight
	// events) were not timed.
	r.Handled = p.Handled
	r.PerSec = float64(r.Handled) / r.Elapsed.Seconds()
	if err := bus.Close(); err != nil {
		return r, fmt.Errorf("close: %w", err)
	}
	return r, nil
}

// median returns the median of vs (the mean of the middle two for an even
// count), or zero for none.
func median[T int64 | float64 | time.Duration](vs []T) T {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// startProfile starts a CPU profile written to path and returns the
// function that stops it and closes the file.
func startProfile(path string) (func() error, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("drain profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
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
		mu          sync.Mutex
		samples     []BoundedSample
		maxSize     atomic.Int64
		peakWaiting atomic.Int64
		start       time.Time
		handled     atomic.Int64
		published   atomic.Int64
	)
	raise := func(v *atomic.Int64, to int64) {
		for {
			m := v.Load()
			if to <= m || v.CompareAndSwap(m, to) {
				return
			}
		}
	}
	observe := func(f FileSizes) {
		raise(&maxSize, f.Total())
		raise(&peakWaiting, published.Load()-handled.Load())
	}
	k := &sink{done: make(chan struct{}, 1)}
	count := func(data []byte) {
		if c := handled.Add(1); c%every == 0 {
			f := statFiles(path)
			observe(f)
			mu.Lock()
			samples = append(samples, BoundedSample{Handled: c, Published: published.Load(), At: time.Since(start), Files: f})
			mu.Unlock()
		}
		k.handle(data)
	}
	var gate func()
	if limit := int64(cfg.BoundedMaxWaiting); limit > 0 {
		r.MaxWaiting = cfg.BoundedMaxWaiting
		gate = func() {
			for published.Load()-handled.Load() >= limit && ctx.Err() == nil {
				time.Sleep(200 * time.Microsecond)
			}
		}
	}

	bus, err := openStorageBus(ctx, s, dir, opts...)
	if err != nil {
		return r, fmt.Errorf("open: %w", err)
	}
	defer bus.Close() // a second Close after the one below does nothing
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
	_, perr := publishMany(ctx, bus, cfg.Publishers, n, &published, gate)
	r.PublishedAt = handled.Load()
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
	if err := bus.Close(); err != nil {
		return r, fmt.Errorf("close: %w", err)
	}
	r.Closed = statFiles(path)
	mu.Lock()
	r.Samples = slices.Clone(samples)
	mu.Unlock()
	r.Max = maxSize.Load()
	r.PeakWaiting = peakWaiting.Load()
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
			b.WriteString("| system | waiting | publish of the backlog (untimed) | db + wal + shm after publishing | bytes on disk per waiting event | handled per round × rounds | drain, median of rounds (slowest–fastest) (ev/s) | CPU per event, median | rate / rate with the smallest backlog | CPU per event / with the smallest backlog |\n")
			b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		}
		if m.Err != nil {
			fmt.Fprintf(&b, "| %s | error: %v | | | | | | | | |\n", r.System.Name, m.Err)
			continue
		}
		first := m.Growth.Points[0]
		for _, p := range m.Growth.Points {
			cpu, cpuRatio := "—", "—"
			if p.CPUPerEvent > 0 {
				cpu = fmt.Sprintf("%.1f µs", us(p.CPUPerEvent))
				if first.CPUPerEvent > 0 {
					cpuRatio = fmt.Sprintf("%.2f×", float64(p.CPUPerEvent)/float64(first.CPUPerEvent))
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %v (%s/s) | %s + %s + %s | %.0f | %s × %d | %s (%s) | %s | %.2f× | %s |\n",
				r.System.Name, count(float64(p.Backlog)), p.Publish.Round(time.Millisecond), count(float64(p.Backlog)/p.Publish.Seconds()),
				mb(p.Files.DB), mb(p.Files.WAL), mb(p.Files.SHM), p.BytesPerEvent,
				count(float64(p.Handled)), len(p.Rounds), count(p.PerSec), p.rateRange(), cpu, p.PerSec/first.PerSec, cpuRatio)
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
			b.WriteString("| handled | published | at | db | wal | db + wal + shm |\n|---:|---:|---:|---:|---:|---:|\n")
			for _, s := range run.Samples {
				fmt.Fprintf(&b, "| %s | %s | %v | %s | %s | %s |\n", count(float64(s.Handled)), count(float64(s.Published)), s.At.Round(100*time.Millisecond), mb(s.Files.DB), mb(s.Files.WAL), mb(s.Files.Total()))
			}
			fmt.Fprintf(&b, "\npublishing ended with %s events handled; at most %s events waited (published, not handled yet)", count(float64(run.PublishedAt)), count(float64(run.PeakWaiting)))
			if run.MaxWaiting > 0 {
				fmt.Fprintf(&b, " (publishers waited at %s)", count(float64(run.MaxWaiting)))
			}
			fmt.Fprintf(&b, ";\nmax %s; final %s (db %s, wal %s) = %.0f bytes per handled event; %s after Close; %s completed deliveries retained\n",
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
				Measured: fmt.Sprintf("%s/s / %s/s = %.2f× (medians of %d drains of %s); CPU per event %.1f / %.1f µs = %.2f×; %.0f bytes on disk per waiting event at %s",
					count(last.PerSec), count(first.PerSec), m.Growth.Ratio, len(last.Rounds), count(float64(last.Handled)),
					us(last.CPUPerEvent), us(first.CPUPerEvent), m.Growth.CPURatio, last.BytesPerEvent, count(float64(last.Backlog))),
				Pass: m.Growth.Ratio >= 0.8,
			})
		}
		if m, ok := r.Get(Bounded); ok {
			for _, run := range m.Bounded.Runs {
				// The size at half-way says what handling alone adds only
				// when publishing still ran: a run whose publishers finished
				// early holds its whole backlog from then on.
				half, ok := halfway(run)
				if !ok || run.PublishedAt < half.Handled {
					continue
				}
				out = append(out, Verdict{
					Target: fmt.Sprintf("file bounded over %s handled events, retention %s (%s): final size ≤ 1.25× the size at half-way", count(float64(run.Events)), run.Retention, r.System.Name),
					Measured: fmt.Sprintf("%s at %s handled, %s at the end (%.2f×), max %s; at most %s events waited",
						mb(half.Files.Total()), count(float64(half.Handled)), mb(run.Final.Total()), float64(run.Final.Total())/float64(half.Files.Total()), mb(run.Max), count(float64(run.PeakWaiting))),
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
