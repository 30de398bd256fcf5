package stream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/stream"
	_ "github.com/ripplehq/ripple/transport/memory"
	_ "github.com/ripplehq/ripple/transport/sqlite"
)

const resultType = "amount.window.summed"

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// payload is the data of the generated input events.
type payload struct {
	Plan   string `json:"plan"`
	Amount int64  `json:"amount"`
}

// sums is the accumulator of the tests' Aggregate: a count and a sum, so
// that a result shows both which events it holds and how many.
type sums struct {
	N   int64 `json:"n"`
	Sum int64 `json:"sum"`
}

// input is one distinct generated event.
type input struct {
	source, id string
	t          time.Time
	p          payload
}

func (in input) event() ripple.Event {
	data, _ := json.Marshal(in.p)
	return ripple.Event{ID: in.id, Source: in.source, Type: "order.placed", Time: in.t, Data: data, DataContentType: "application/json"}
}

// generate returns n distinct events over span, their times in
// publish-like order, each within jitter before its position (so the
// input is out of order by at most jitter), from two sources sharing
// ids (the same id under another source is another event).
func generate(r *rand.Rand, n int, span, jitter time.Duration) []input {
	plans := []string{"free", "pro", "team"}
	out := make([]input, n)
	for i := range out {
		pos := time.Duration(int64(span) * int64(i) / int64(n))
		t := epoch.Add(pos - time.Duration(r.Int64N(int64(jitter)+1)))
		out[i] = input{
			source: []string{"svc-a", "svc-b"}[i%2],
			id:     fmt.Sprintf("e%d", i/2),
			t:      t,
			p:      payload{Plan: plans[r.IntN(len(plans))], Amount: r.Int64N(100)},
		}
	}
	return out
}

// deliveries turns distinct inputs into a delivery order: locally
// shuffled (in blocks of window positions), with dupFrac of
// the events delivered a second time, some soon after (within their
// window) and some much later (after it has closed).
func deliveries(r *rand.Rand, in []input, window int, dupFrac float64) []input {
	out := append([]input(nil), in...)
	for lo := 0; lo < len(out); lo += window {
		block := out[lo:min(lo+window, len(out))]
		r.Shuffle(len(block), func(i, j int) { block[i], block[j] = block[j], block[i] })
	}
	again := map[int][]input{} // redeliveries due before position i
	for i, e := range out {
		if r.Float64() < dupFrac {
			at := i + 1 + r.IntN(window)
			if r.IntN(4) == 0 {
				at = i + 1 + r.IntN(len(out))
			}
			again[at] = append(again[at], e)
		}
	}
	var res []input
	for i := 0; i <= 2*len(out)+window; i++ {
		res = append(res, again[i]...)
		if i < len(out) {
			res = append(res, out[i])
		}
	}
	return res
}

// wkey names one key's window in expectations.
type wkey struct {
	start time.Time
	key   string
}

// starts lists, by brute force, the starts of every window of the given
// size and hop that contains t: every multiple of hop in (t-size, t].
func starts(t time.Time, size, hop time.Duration) []time.Time {
	var out []time.Time
	first := t.Add(-size).Truncate(hop) // Truncate rounds down for times after year 1
	for s := first; !s.After(t); s = s.Add(hop) {
		if s.After(t.Add(-size)) {
			out = append(out, s)
		}
	}
	return out
}

// expectation is what a stream should publish and count for one delivery
// order, recomputed by brute force.
type expectation struct {
	windows                                map[wkey]sums
	events, duplicates, dropped, partLates int64
}

// simulate recomputes, one delivery at a time, what the stream must do:
// the watermark is the latest time seen minus lateness, a window whose
// end is at or before it is closed, an event is folded into each of its
// open windows unless already folded there, and is late for the closed
// ones.
func simulate(del []input, size, hop, lateness time.Duration) expectation {
	ex := expectation{windows: map[wkey]sums{}}
	folded := map[wkey]map[[2]string]bool{}
	var wm, maxT time.Time
	started := false
	for _, d := range del {
		id := [2]string{d.source, d.id}
		var open, closed []time.Time
		for _, s := range starts(d.t, size, hop) {
			if started && !s.Add(size).After(wm) {
				closed = append(closed, s)
			} else {
				open = append(open, s)
			}
		}
		switch {
		case len(open) == 0:
			ex.dropped++
		case folded[wkey{open[0], d.p.Plan}][id]:
			ex.duplicates++
		default:
			ex.events++
			if len(closed) > 0 {
				ex.partLates++
			}
			for _, s := range open {
				k := wkey{s, d.p.Plan}
				if folded[k] == nil {
					folded[k] = map[[2]string]bool{}
				}
				folded[k][id] = true
				w := ex.windows[k]
				w.N++
				w.Sum += d.p.Amount
				ex.windows[k] = w
			}
		}
		if !started || d.t.After(maxT) {
			maxT, started = d.t, true
			wm = maxT.Add(-lateness)
		}
	}
	return ex
}

// naive is the plainest recomputation: for every window, the distinct
// events whose time falls in it.
func naive(in []input, size, hop time.Duration) map[wkey]sums {
	out := map[wkey]sums{}
	lo, hi := in[0].t, in[0].t
	for _, e := range in {
		if e.t.Before(lo) {
			lo = e.t
		}
		if e.t.After(hi) {
			hi = e.t
		}
	}
	seen := map[[2]string]bool{}
	for s := lo.Add(-size).Truncate(hop); !s.After(hi); s = s.Add(hop) {
		clear(seen)
		for _, e := range in {
			id := [2]string{e.source, e.id}
			if seen[id] || e.t.Before(s) || !e.t.Before(s.Add(size)) {
				continue
			}
			seen[id] = true
			k := wkey{s, e.p.Plan}
			w := out[k]
			w.N++
			w.Sum += e.p.Amount
			out[k] = w
		}
	}
	return out
}

// collector records the results a bus publishes, through a publish hook.
type collector struct {
	mu      sync.Mutex
	results map[string]stream.Result[sums] // by event id
	events  []ripple.Event
}

func (c *collector) OnPublish(_ context.Context, e ripple.Event, err error) {
	if err != nil || e.Type != resultType {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, e)
	if e.Duplicate {
		return
	}
	var r stream.Result[sums]
	if err := json.Unmarshal(e.Data, &r); err != nil {
		panic(err)
	}
	if c.results == nil {
		c.results = map[string]stream.Result[sums]{}
	}
	if _, dup := c.results[e.ID]; dup {
		panic("result " + e.ID + " stored twice")
	}
	c.results[e.ID] = r
}

func (c *collector) byWindow() map[wkey]sums {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[wkey]sums{}
	for _, r := range c.results {
		out[wkey{r.Start, r.Key}] = r.Value
	}
	return out
}

func (c *collector) published() []ripple.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]ripple.Event(nil), c.events...)
}

func newBus(t testing.TB, url string, hooks ...any) *ripple.Bus {
	t.Helper()
	bus, err := ripple.Open(context.Background(), url, ripple.WithLogger(quiet), ripple.WithHooks(hooks...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	return bus
}

func sumStream(t testing.TB, bus *ripple.Bus, name string, opts ...stream.Option) *stream.Stream {
	t.Helper()
	opts = append([]stream.Option{
		stream.KeyByData(func(p payload) string { return p.Plan }),
		stream.Emit(resultType),
		stream.WithLogger(quiet),
	}, opts...)
	s := stream.New(bus, name, "order.placed", opts...)
	err := stream.Aggregate(s, func() sums { return sums{} }, func(a sums, p payload) sums {
		a.N++
		a.Sum += p.Amount
		return a
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func diff(t *testing.T, got, want map[wkey]sums) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("window %s key %q: no result, want %+v", k.start.Format(time.TimeOnly), k.key, w)
		} else if g != w {
			t.Errorf("window %s key %q: %+v, want %+v", k.start.Format(time.TimeOnly), k.key, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("window %s key %q: unexpected result %+v", k.start.Format(time.TimeOnly), k.key, g)
		}
	}
}

// TestAgainstBruteForce feeds shuffled, duplicated input straight to the
// stream, over several seeds and window shapes, and compares every
// result and counter with a brute-force recomputation; with lateness
// larger than the input's disorder, with the plain per-window
// recomputation too.
func TestAgainstBruteForce(t *testing.T) {
	shapes := []struct {
		name      string
		size, hop time.Duration
		opt       stream.Option
	}{
		{"tumbling", time.Minute, time.Minute, stream.Tumbling(time.Minute)},
		{"hopping", 3 * time.Minute, time.Minute, stream.Hopping(3*time.Minute, time.Minute)},
		{"hopping-uneven", 150 * time.Second, time.Minute, stream.Hopping(150*time.Second, time.Minute)},
	}
	for _, sh := range shapes {
		for seed := uint64(1); seed <= 4; seed++ {
			for _, lateness := range []time.Duration{0, 20 * time.Second, 5 * time.Minute} {
				t.Run(fmt.Sprintf("%s/seed%d/late%s", sh.name, seed, lateness), func(t *testing.T) {
					r := rand.New(rand.NewPCG(seed, 14))
					in := generate(r, 1500, 30*time.Minute, 40*time.Second)
					del := deliveries(r, in, 60, 0.2)
					col := &collector{}
					bus := newBus(t, "memory://", col)
					var lateMu sync.Mutex
					lateCalls := 0
					s := sumStream(t, bus, "sums", sh.opt, stream.AllowedLateness(lateness),
						stream.OnLate(func(ripple.Event, stream.Window) { lateMu.Lock(); lateCalls++; lateMu.Unlock() }))
					ctx := context.Background()
					maxOpen := 0
					for _, d := range del {
						if err := s.Handle(ctx, d.event()); err != nil {
							t.Fatal(err)
						}
						maxOpen = max(maxOpen, s.Stats().OpenWindows)
					}
					// Windows close as time moves on: memory holds only
					// the windows the lateness and disorder keep open.
					perKey := int((sh.size+lateness+2*time.Minute)/sh.hop) + 2
					if maxOpen > 3*perKey {
						t.Errorf("up to %d windows open at once, want at most %d (3 keys × %d)", maxOpen, 3*perKey, perKey)
					}
					if err := s.Advance(ctx, epoch.Add(24*time.Hour)); err != nil {
						t.Fatal(err)
					}
					ex := simulate(del, sh.size, sh.hop, lateness)
					diff(t, col.byWindow(), ex.windows)
					st := s.Stats()
					if st.Events != ex.events || st.Duplicates != ex.duplicates || st.Dropped != ex.dropped || st.PartlyLate != ex.partLates {
						t.Errorf("stats %+v; want events %d, duplicates %d, dropped %d, partly late %d",
							st, ex.events, ex.duplicates, ex.dropped, ex.partLates)
					}
					if st.OpenWindows != 0 || st.Emitted != int64(len(ex.windows)) || st.Republished != 0 {
						t.Errorf("after Advance: %+v; want no open window, %d emitted, none republished", st, len(ex.windows))
					}
					if ex.duplicates == 0 {
						t.Errorf("the input has no duplicate within a window; the test proves nothing about dedup")
					}
					if lateness == 0 && ex.dropped == 0 {
						t.Errorf("no delivery was late; the test proves nothing about lateness")
					}
					if lateCalls == 0 && ex.dropped+ex.partLates > 0 {
						t.Errorf("OnLate never called, want a call for each late window")
					}
					if lateness == 5*time.Minute {
						// Nothing in this input is late by more than its
						// disorder: the plain recomputation must hold.
						diff(t, col.byWindow(), naive(in, sh.size, sh.hop))
					}
				})
			}
		}
	}
}
