package stream

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/ripplehq/ripple"
)

// identity is an event's identity, as publish deduplication sees it.
type identity struct{ source, id string }

// win is one key's window: its accumulator, and the identities of the
// events whose latest window it is (see core.handle).
type win[A any] struct {
	acc  A
	n    int64
	seen map[identity]struct{}
}

// pane holds every key's window of one start.
type pane[A any] struct {
	start int64
	wins  map[string]*win[A]
}

// core is a registered stream's state: its open windows, by start and
// key, and its watermark. Times are Unix nanoseconds.
type core[T, A any] struct {
	s      *Stream
	decode func(ripple.Event) (T, error)
	init   func() A
	add    func(A, T) A
	keyOf  func(T) string // the key from the decoded payload, when KeyByData's type is T
	size   int64
	hop    int64
	late   int64
	source string

	// lock is a channel rather than a mutex so that a handler waiting for
	// it gives up when its ctx ends: results are published with it held,
	// and a slow transport must not pile up handlers past their timeout.
	lock   chan struct{}
	panes  map[int64]*pane[A]
	starts startHeap // starts of panes, earliest first: the next to close
	hasWM  bool
	wm     int64 // watermark: windows with end <= wm are closed
	hasMax bool
	maxT   int64 // latest event time seen
	n      counters
	wmSeen atomic.Int64 // wm for Stats, which reads without the lock; math.MinInt64 before any
	logged logThrottle
}

func newCore[T, A any](s *Stream, decode func(ripple.Event) (T, error), init func() A, add func(A, T) A) *core[T, A] {
	keyOf, _ := s.cfg.keyOfData.(func(T) string)
	c := &core[T, A]{
		keyOf:  keyOf,
		s:      s,
		decode: decode,
		init:   init,
		add:    add,
		size:   int64(s.cfg.size),
		hop:    int64(s.cfg.hop),
		late:   int64(s.cfg.lateness),
		source: "ripple://stream/" + s.name,
		lock:   make(chan struct{}, 1),
		panes:  make(map[int64]*pane[A]),
	}
	c.wmSeen.Store(math.MinInt64)
	return c
}

func (c *core[T, A]) acquire(ctx context.Context) error {
	select {
	case c.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *core[T, A]) release() { <-c.lock }

// floorDiv is a/b rounded toward minus infinity, so that windows before
// 1970 align as those after do.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func (c *core[T, A]) closed(start int64) bool {
	return c.hasWM && start+c.size <= c.wm
}

func (c *core[T, A]) handle(ctx context.Context, e ripple.Event) error {
	if e.Time.IsZero() {
		return ripple.Permanent(fmt.Errorf("stream %q: event %s (%s) has no time; a stream windows events on their time", c.s.name, e.ID, e.Type))
	}
	// Keying and decoding happen before the lock, so that concurrent
	// deliveries do that work in parallel.
	v, err := c.decode(e)
	if err != nil {
		return ripple.Permanent(fmt.Errorf("stream %q: %w", c.s.name, err))
	}
	key := ""
	if c.keyOf != nil {
		key = c.keyOf(v)
	} else if c.s.cfg.key != nil {
		k, err := c.s.cfg.key(e)
		if err != nil {
			return ripple.Permanent(fmt.Errorf("stream %q: key of event %s (%s): %w", c.s.name, e.ID, e.Type, err))
		}
		key = k
	}
	t := e.Time.UnixNano()
	if err := c.acquire(ctx); err != nil {
		return err
	}
	defer c.release()

	// The event's windows start at latest, latest-hop, ... down to the
	// first start after t-size. The latest closes last, so it holds the
	// event's identity for deduplication: while any of the event's
	// windows is open, so is the latest, and a redelivery is recognised
	// there; once it has closed, the event is late for every window.
	latest := floorDiv(t, c.hop) * c.hop
	if c.closed(latest) {
		c.n.Dropped.Add(1)
		c.reportLate(e, key, latest, true)
	} else {
		id := identity{e.Source, e.ID}
		lw := c.window(latest, key)
		if _, dup := lw.seen[id]; dup {
			c.n.Duplicates.Add(1)
		} else {
			if lw.seen == nil {
				lw.seen = make(map[identity]struct{})
			}
			lw.seen[id] = struct{}{}
			c.n.Events.Add(1)
			lw.acc = c.add(lw.acc, v)
			lw.n++
			missed := false
			for start := latest - c.hop; start > t-c.size; start -= c.hop {
				if c.closed(start) {
					missed = true
					continue
				}
				w := c.window(start, key)
				w.acc = c.add(w.acc, v)
				w.n++
			}
			if missed {
				c.n.PartlyLate.Add(1)
				c.reportLate(e, key, latest, false)
			}
		}
	}
	if t > c.maxT || !c.hasMax {
		c.maxT, c.hasMax = t, true
		if wm := sat(t, -c.late); !c.hasWM || wm > c.wm {
			c.wm, c.hasWM = wm, true
			c.wmSeen.Store(wm)
		}
	}
	return c.emit(ctx)
}

// sat is a+b saturated at the int64 range.
func sat(a, b int64) int64 {
	s := a + b
	if b < 0 && s > a {
		return math.MinInt64
	}
	if b > 0 && s < a {
		return math.MaxInt64
	}
	return s
}

// window returns key's window starting at start, creating it.
func (c *core[T, A]) window(start int64, key string) *win[A] {
	p := c.panes[start]
	if p == nil {
		p = &pane[A]{start: start, wins: make(map[string]*win[A])}
		c.panes[start] = p
		heap.Push(&c.starts, start)
	}
	w := p.wins[key]
	if w == nil {
		w = &win[A]{acc: c.init()}
		p.wins[key] = w
		c.n.OpenWindows.Add(1)
	}
	return w
}

// reportLate counts and reports an event too late for some or all of its
// windows: to OnLate for each, and to the log, throttled.
func (c *core[T, A]) reportLate(e ripple.Event, key string, latest int64, all bool) {
	t := e.Time.UnixNano()
	missed := 0
	for start := latest; start > t-c.size; start -= c.hop {
		if !c.closed(start) {
			continue
		}
		missed++
		if c.s.cfg.onLate != nil {
			c.s.cfg.onLate(e, c.bounds(start))
		}
	}
	if n, ok := c.logged.allow(time.Now()); ok {
		what := "dropped: every window it belongs to has closed"
		if !all {
			what = fmt.Sprintf("too late for %d of its windows, counted in the others", missed)
		}
		c.s.cfg.logger.Warn("stream: late event "+what,
			"stream", c.s.name, "event", e.ID, "type", e.Type, "key", key,
			"time", e.Time, "watermark", time.Unix(0, c.wm).UTC(),
			"lateness", c.s.cfg.lateness, "late_events_not_logged", n)
	}
}

func (c *core[T, A]) bounds(start int64) Window {
	return Window{Start: time.Unix(0, start).UTC(), End: time.Unix(0, start+c.size).UTC()}
}

func (c *core[T, A]) advance(ctx context.Context, t time.Time) error {
	if t.IsZero() {
		return fmt.Errorf("stream %q: Advance(zero time): pass the event time the stream has reached", c.s.name)
	}
	if err := c.acquire(ctx); err != nil {
		return err
	}
	defer c.release()
	if n := t.UnixNano(); !c.hasWM || n > c.wm {
		c.wm, c.hasWM = n, true
		c.wmSeen.Store(n)
	}
	return c.emit(ctx)
}

// emit publishes the results of the closed windows, earliest first and
// in key order within a window, and forgets each once it is stored. A
// window whose publish fails stays, and is published by a later call.
func (c *core[T, A]) emit(ctx context.Context) error {
	if len(c.starts) == 0 || !c.closed(c.starts[0]) {
		return nil
	}
	// Results are not caused by the one event that closed their window:
	// they are published without the handler's ctx values (its
	// correlation and causation), keeping its deadline and cancellation.
	pctx := valueless{ctx}
	for len(c.starts) > 0 && c.closed(c.starts[0]) {
		p := c.panes[c.starts[0]]
		keys := make([]string, 0, len(p.wins))
		for k := range p.wins {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if err := c.publish(pctx, p.start, k, p.wins[k]); err != nil {
				return err
			}
			delete(p.wins, k)
			c.n.OpenWindows.Add(-1)
		}
		heap.Pop(&c.starts)
		delete(c.panes, p.start)
	}
	return nil
}

func (c *core[T, A]) publish(ctx context.Context, start int64, key string, w *win[A]) error {
	b := c.bounds(start)
	data, err := json.Marshal(Result[A]{Stream: c.s.name, Key: key, Start: b.Start, End: b.End, Events: w.n, Value: w.acc})
	if err != nil {
		// No retry makes this value encode: say so, and let the window go
		// rather than hold every later result behind it.
		c.n.Unpublished.Add(1)
		c.s.cfg.logger.Error("stream: window result does not encode to JSON; it is not published",
			"stream", c.s.name, "key", key, "start", b.Start, "end", b.End, "err", err)
		return nil
	}
	opts := []ripple.PublishOption{
		ripple.WithID(ResultID(c.s.name, c.s.cfg.emit, b, key)),
		ripple.WithSource(c.source),
		ripple.WithEventTime(b.End),
	}
	if key != "" && len(key) <= ripple.MaxNameLength {
		opts = append(opts, ripple.WithKey(key))
	}
	ev, err := c.s.bus.Publish(ctx, c.s.cfg.emit, json.RawMessage(data), opts...)
	if refused(err) {
		// Publish refuses this result whatever the retries (too large
		// for the bus, say): the same as a result that does not encode.
		c.n.Unpublished.Add(1)
		c.s.cfg.logger.Error("stream: window result refused by Publish; it is not published",
			"stream", c.s.name, "key", key, "start", b.Start, "end", b.End, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("stream %q: publish the result of window %s..%s key %q: %w", c.s.name,
			b.Start.Format(time.RFC3339Nano), b.End.Format(time.RFC3339Nano), key, err)
	}
	if !ev.Duplicate {
		c.n.Emitted.Add(1)
		return nil
	}
	c.n.Republished.Add(1)
	if !bytes.Equal(ev.Data, data) {
		c.n.Conflicts.Add(1)
		c.s.cfg.logger.Warn("stream: a window result was published before with other data; the first one stands",
			"stream", c.s.name, "key", key, "start", b.Start, "end", b.End,
			"stored", string(ev.Data), "computed", string(data))
	}
	return nil
}

func (c *core[T, A]) stats() Stats {
	st := Stats{
		Events:      c.n.Events.Load(),
		Duplicates:  c.n.Duplicates.Load(),
		Dropped:     c.n.Dropped.Load(),
		PartlyLate:  c.n.PartlyLate.Load(),
		Emitted:     c.n.Emitted.Load(),
		Republished: c.n.Republished.Load(),
		Conflicts:   c.n.Conflicts.Load(),
		Unpublished: c.n.Unpublished.Load(),
		OpenWindows: int(c.n.OpenWindows.Load()),
	}
	if wm := c.wmSeen.Load(); wm != math.MinInt64 {
		st.Watermark = time.Unix(0, wm).UTC()
	}
	return st
}

// counters are Stats' counts, atomic so that Stats never waits for the
// lock, which a publish to a slow transport may hold.
type counters struct {
	Events, Duplicates, Dropped, PartlyLate      atomic.Int64
	Emitted, Republished, Conflicts, Unpublished atomic.Int64
	OpenWindows                                  atomic.Int64
}

// refused reports whether a publish error says the event itself is
// wrong, so that publishing it again cannot succeed.
func refused(err error) bool {
	return errors.Is(err, ripple.ErrTooLarge) || errors.Is(err, ripple.ErrInvalidOption) ||
		errors.Is(err, ripple.ErrInvalidName) || errors.Is(err, ripple.ErrNotSupported)
}

// ResultID returns the id of the result event a stream publishes for one
// key and window: a UUIDv5 of the stream's name, its result type, the
// window and the key. A run over the same events publishes the same ids,
// so a result published again after a crash or a replay is recognised by
// the transport's publish deduplication and stored once.
func ResultID(stream, resultType string, w Window, key string) string {
	name := "ripple://stream/" + stream + "?type=" + resultType +
		"&start=" + strconv.FormatInt(w.Start.UnixNano(), 10) +
		"&end=" + strconv.FormatInt(w.End.UnixNano(), 10) +
		"&key=" + strconv.Quote(key)
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte(name)).String()
}

// valueless is a ctx without its parent's values: the parent's deadline
// and cancellation only.
type valueless struct{ context.Context }

func (valueless) Value(any) any { return nil }

// startHeap is a min-heap of window starts.
type startHeap []int64

func (h startHeap) Len() int           { return len(h) }
func (h startHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h startHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *startHeap) Push(x any)        { *h = append(*h, x.(int64)) }
func (h *startHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// logThrottle lets one late-event log line through per second, counting
// the ones held back, so that a burst of late events does not flood the
// log while Stats still counts every one.
type logThrottle struct {
	last       time.Time
	suppressed int
}

func (l *logThrottle) allow(now time.Time) (suppressed int, ok bool) {
	if !l.last.IsZero() && now.Sub(l.last) < time.Second {
		l.suppressed++
		return 0, false
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return n, true
}
