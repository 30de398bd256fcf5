// Package stream computes windowed aggregates over Ripple events (Level
// 3 stream processing): tumbling and hopping windows over an event
// pattern, grouped by a key, on event time with an allowed lateness.
//
// An [Aggregator] is the computation: events go in with Add, in any
// order and any number of times, and results come out as windows close.
// [Run] puts one on a bus: it registers a handler for the pattern and
// publishes each window's result as an event with a deterministic id, so
// that a result computed twice (a crash and a re-run over the same
// history) is stored once by the transport's publish deduplication.
//
// # Windows and time
//
// Windows are aligned to the Unix epoch. A tumbling window (Hop zero or
// equal to Size) covers [k·Size, (k+1)·Size); a hopping window of Size
// starts every Hop, so an event belongs to Size/Hop windows (Size must be
// a multiple of Hop). Time is the event's time (CloudEvents "time", the
// publisher's clock). The watermark is the latest event time seen minus
// Lateness: a window closes, and its result is emitted, once the
// watermark reaches its end. An event whose windows have all closed when
// it arrives is late: it is dropped and counted (see Aggregator.Late).
// Advance moves the watermark by another clock (the wall clock, for a
// stream that goes quiet), and Flush closes every open window.
//
// # Duplicates
//
// Delivery is at least once, so the same event (same source and id) may
// arrive twice; each window counts it once. The ids are kept per open
// window only.
//
// # Crashes
//
// Open windows live in the memory of the process. A process that stops
// loses them; re-running the stream over the history since the oldest
// window that was open (a new handler started from that time, or Replay)
// recomputes them, and the results already published before the crash
// are deduplicated by their ids. Publish deduplication is a transport
// capability (sqlite, postgres, redis, memory): Run refuses a transport
// without it, since a re-run would publish results twice.
package stream

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ripplehq/ripple"
)

// Window is the time span [Start, End).
type Window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Result is one closed window of one key.
type Result[A any] struct {
	// Key is the group's key (empty without a Key function).
	Key    string `json:"key"`
	Window Window `json:"window"`
	// Count is the number of distinct events in the window.
	Count int `json:"count"`
	// Value is the aggregate.
	Value A `json:"value"`
}

// ID returns the result's deterministic event id for the stream name:
// the same stream, key and window always give the same id.
func (r Result[A]) ID(name string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s|%d:%s|%d|%d", len(name), name, len(r.Key), r.Key, r.Window.Start.UnixNano(), r.Window.End.UnixNano())
	return "win-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// Config describes a windowed aggregate.
type Config[A any] struct {
	// Size is the window length; required.
	Size time.Duration
	// Hop is the interval between window starts; zero (or Size) makes
	// tumbling windows. Size must be a multiple of Hop.
	Hop time.Duration
	// Lateness is how far behind the latest event time an event may
	// arrive and still be counted.
	Lateness time.Duration
	// Key groups events; nil puts every event in one group. An error
	// drops the event (Add returns it).
	Key func(ripple.Event) (string, error)
	// Init returns a window's initial aggregate; nil means A's zero
	// value.
	Init func() A
	// Add folds an event into a window's aggregate; nil only counts
	// (Result.Count).
	Add func(acc A, e ripple.Event) (A, error)
}

type winKey struct {
	key   string
	start int64 // unix nanoseconds
}

type winState[A any] struct {
	seen  map[string]bool
	count int
	acc   A
}

// Aggregator computes a Config's windows. It is safe for concurrent use.
type Aggregator[A any] struct {
	cfg Config[A]

	mu        sync.Mutex
	open      map[winKey]*winState[A]
	maxTime   time.Time
	watermark time.Time
	late      int64
}

// New checks cfg and returns an empty Aggregator.
func New[A any](cfg Config[A]) (*Aggregator[A], error) {
	if cfg.Size <= 0 {
		return nil, errors.New("stream: Size must be positive")
	}
	if cfg.Hop == 0 {
		cfg.Hop = cfg.Size
	}
	if cfg.Hop < 0 || cfg.Hop > cfg.Size || cfg.Size%cfg.Hop != 0 {
		return nil, fmt.Errorf("stream: Hop %s must be positive, at most Size %s, and divide it", cfg.Hop, cfg.Size)
	}
	if cfg.Lateness < 0 {
		return nil, errors.New("stream: Lateness must not be negative")
	}
	return &Aggregator[A]{cfg: cfg, open: map[winKey]*winState[A]{}}, nil
}

// Windows returns the windows that contain t, earliest first.
func (a *Aggregator[A]) Windows(t time.Time) []Window {
	return windowsOf(t, a.cfg.Size, a.cfg.Hop)
}

func windowsOf(t time.Time, size, hop time.Duration) []Window {
	n := t.UnixNano()
	h := int64(hop)
	last := n - mod(n, h) // the latest start at or before t
	var out []Window
	for s := last - int64(size) + h; s <= last; s += h {
		out = append(out, Window{Start: time.Unix(0, s).UTC(), End: time.Unix(0, s+int64(size)).UTC()})
	}
	return out
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

// Add folds e into its windows that are still open and returns the
// results of the windows its time closes. A late event (every window of
// it closed) is counted and dropped; a duplicate (same source and id) is
// ignored by each window that has it.
func (a *Aggregator[A]) Add(e ripple.Event) ([]Result[A], error) {
	if e.Time.IsZero() {
		return nil, errors.New("stream: event has no time")
	}
	key := ""
	if a.cfg.Key != nil {
		k, err := a.cfg.Key(e)
		if err != nil {
			return nil, fmt.Errorf("stream: key of event %s: %w", e.ID, err)
		}
		key = k
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ident := fmt.Sprintf("%d:%s/%s", len(e.Source), e.Source, e.ID)
	added := false
	for _, w := range windowsOf(e.Time, a.cfg.Size, a.cfg.Hop) {
		if !a.watermark.IsZero() && !w.End.After(a.watermark) {
			continue // closed
		}
		added = true
		k := winKey{key, w.Start.UnixNano()}
		st := a.open[k]
		if st == nil {
			st = &winState[A]{seen: map[string]bool{}}
			if a.cfg.Init != nil {
				st.acc = a.cfg.Init()
			}
			a.open[k] = st
		}
		if st.seen[ident] {
			continue
		}
		if a.cfg.Add != nil {
			acc, err := a.cfg.Add(st.acc, e)
			if err != nil {
				return nil, fmt.Errorf("stream: adding event %s: %w", e.ID, err)
			}
			st.acc = acc
		}
		st.seen[ident] = true
		st.count++
	}
	if !added {
		a.late++
	}
	if e.Time.After(a.maxTime) {
		a.maxTime = e.Time
	}
	return a.closeUpTo(a.maxTime.Add(-a.cfg.Lateness)), nil
}

// Advance moves the watermark to t (if later) and returns the results of
// the windows that closes.
func (a *Aggregator[A]) Advance(t time.Time) []Result[A] {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closeUpTo(t)
}

// Flush closes every open window and returns their results.
func (a *Aggregator[A]) Flush() []Result[A] {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Result[A]
	for k, st := range a.open {
		out = append(out, a.result(k, st))
		delete(a.open, k)
	}
	sortResults(out)
	return out
}

// Late returns how many events arrived after all their windows closed.
func (a *Aggregator[A]) Late() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.late
}

// Open returns how many windows are open.
func (a *Aggregator[A]) Open() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.open)
}

// closeUpTo advances the watermark and emits closed windows. Call with
// a.mu held.
func (a *Aggregator[A]) closeUpTo(w time.Time) []Result[A] {
	if !w.After(a.watermark) {
		return nil
	}
	a.watermark = w
	var out []Result[A]
	for k, st := range a.open {
		end := time.Unix(0, k.start+int64(a.cfg.Size))
		if !end.After(w) {
			out = append(out, a.result(k, st))
			delete(a.open, k)
		}
	}
	sortResults(out)
	return out
}

func (a *Aggregator[A]) result(k winKey, st *winState[A]) Result[A] {
	start := time.Unix(0, k.start).UTC()
	return Result[A]{Key: k.key, Window: Window{Start: start, End: start.Add(a.cfg.Size)}, Count: st.count, Value: st.acc}
}

func sortResults[A any](rs []Result[A]) {
	slices.SortFunc(rs, func(x, y Result[A]) int {
		if c := x.Window.Start.Compare(y.Window.Start); c != 0 {
			return c
		}
		switch {
		case x.Key < y.Key:
			return -1
		case x.Key > y.Key:
			return 1
		}
		return 0
	})
}
