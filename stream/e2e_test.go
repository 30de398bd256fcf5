package stream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/stream"
	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
	_ "github.com/ripplehq/ripple/transport/redis"
)

// urls are the transports the end-to-end tests run on: the in-process
// one, the durable default, and Redis when RIPPLE_TEST_REDIS_URL names a
// server (as scripts/test sets it; the redis transport's own tests
// report a missing server). Each call gives a fresh store.
func urls(t *testing.T) map[string]func() string {
	m := map[string]func() string{
		"memory": func() string { return "memory://" + strings.NewReplacer("/", "-").Replace(t.Name()) },
		"sqlite": func() string { return "sqlite://" + filepath.Join(t.TempDir(), "ripple.db") },
	}
	if base := os.Getenv("RIPPLE_TEST_REDIS_URL"); base != "" {
		m["redis"] = func() string { return redisURL(t, base) }
	}
	return m
}

// redisURL is base with a key prefix of its own, whose keys are deleted
// when the test ends.
func redisURL(t *testing.T, base string) string {
	prefix := fmt.Sprintf("stream-test.%s.%d", strings.NewReplacer("/", ".").Replace(t.Name()), rand.Int64())
	t.Cleanup(func() {
		opts, err := goredis.ParseURL(base)
		if err != nil {
			return
		}
		c := goredis.NewClient(opts)
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + "prefix=" + url.QueryEscape(prefix)
}

// unique gives every input an id of its own. The stream keys events by
// source and id, which the tests that feed it directly check; through a
// transport, ids are unique so that these tests check the stream and
// not the transport's identity rules.
func unique(in []input) []input {
	out := make([]input, len(in))
	for i, e := range in {
		e.id = e.source + "-" + e.id
		out[i] = e
	}
	return out
}

// requireDuplicateReports skips unless the bus's transport reports a
// publish of a stored (source, id) as a duplicate, which a re-run needs
// to be seen as publishing nothing new.
func requireDuplicateReports(t *testing.T, bus *ripple.Bus) {
	t.Helper()
	ctx := context.Background()
	for range 2 {
		ev, err := bus.Publish(ctx, "probe.duplicate.checked", payload{}, ripple.WithID("probe"), ripple.WithSource("probe"))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Duplicate {
			return
		}
	}
	t.Skipf("the %s transport does not report duplicate publishes (transport.Message.Duplicate)", bus.TransportName())
}

func publishAll(t *testing.T, bus *ripple.Bus, in []input) {
	t.Helper()
	ctx := context.Background()
	for _, e := range in {
		ev, err := bus.Publish(ctx, "order.placed", e.p, ripple.WithID(e.id), ripple.WithSource(e.source), ripple.WithEventTime(e.t))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Duplicate {
			t.Fatalf("input %s/%s stored twice", e.source, e.id)
		}
	}
}

func waitIdle(t *testing.T, bus *ripple.Bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := bus.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestEndToEnd runs a stream as a bus handler on memory:// and sqlite://
// over shuffled input whose every tenth event fails after being folded
// (as a crash before the ack would), so it is delivered again, and checks
// the results against the brute-force recomputation, less the events
// the stream reported too late on their first delivery.
func TestEndToEnd(t *testing.T) {
	for name, url := range urls(t) {
		t.Run(name, func(t *testing.T) {
			for seed := uint64(1); seed <= 2; seed++ {
				r := rand.New(rand.NewPCG(seed, 7))
				in := unique(generate(r, 600, 20*time.Minute, 30*time.Second))
				order := deliveries(r, in, 40, 0) // shuffled, published once each
				col := &collector{}
				bus := newBus(t, url(), col)
				failAfterFold := func(next ripple.HandlerFunc) ripple.HandlerFunc {
					return func(ctx context.Context, e ripple.Event) error {
						err := next(ctx, e)
						if err == nil && e.Attempt == 1 && strings.HasSuffix(e.ID, "0") {
							return errors.New("lost ack")
						}
						return err
					}
				}
				var mu sync.Mutex
				missed := map[wkey]map[[2]string]bool{} // first deliveries reported late
				s := sumStream(t, bus, "sums", stream.Hopping(2*time.Minute, time.Minute), stream.AllowedLateness(time.Minute),
					stream.HandlerOptions(ripple.WithMiddleware(failAfterFold), ripple.Backoff(time.Millisecond, 5*time.Millisecond), ripple.MaxAttempts(20)),
					stream.OnLate(func(e ripple.Event, w stream.Window) {
						if e.Attempt != 1 {
							return // a redelivery of an event counted before
						}
						var p payload
						_ = e.Decode(&p)
						mu.Lock()
						defer mu.Unlock()
						k := wkey{w.Start, p.Plan}
						if missed[k] == nil {
							missed[k] = map[[2]string]bool{}
						}
						missed[k][[2]string{e.Source, e.ID}] = true
					}))
				if err := bus.Start(context.Background()); err != nil {
					t.Fatal(err)
				}
				publishAll(t, bus, order)
				waitIdle(t, bus)
				if err := s.Advance(context.Background(), epoch.Add(24*time.Hour)); err != nil {
					t.Fatal(err)
				}
				want := naive(in, 2*time.Minute, time.Minute)
				for k, ids := range missed {
					w := want[k]
					for id := range ids {
						for _, e := range in {
							if e.source == id[0] && e.id == id[1] {
								w.N--
								w.Sum -= e.p.Amount
							}
						}
					}
					if w.N == 0 {
						delete(want, k)
					} else {
						want[k] = w
					}
				}
				diff(t, col.byWindow(), want)
				st := s.Stats()
				if st.Duplicates == 0 {
					t.Errorf("stats %+v: no redelivery recognised, want the failed-after-fold events counted as duplicates", st)
				}
				if err := bus.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestRerunPublishesNothingNew simulates a crash: a second process with
// an empty stream of the same name replays the handler's history and
// computes every window again; every result publish finds it stored
// (Duplicate), and nothing new is stored.
func TestRerunPublishesNothingNew(t *testing.T) {
	for name, url := range urls(t) {
		t.Run(name, func(t *testing.T) {
			u := url()
			if strings.HasPrefix(u, "memory://") {
				// A named memory store lives while a bus holds it: this
				// one stands for the durable store across the "crash".
				newBus(t, u)
			}
			r := rand.New(rand.NewPCG(3, 3))
			in := unique(generate(r, 300, 10*time.Minute, 20*time.Second))
			// The lateness spans the whole input: both runs count every
			// event, whatever order the transport delivers in (which no
			// transport promises), so they compute the same results.
			order := deliveries(r, in, 20, 0)

			first := &collector{}
			bus := newBus(t, u, first)
			requireDuplicateReports(t, bus)
			s := sumStream(t, bus, "sums", stream.Tumbling(time.Minute), stream.AllowedLateness(time.Hour))
			if err := bus.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			publishAll(t, bus, order)
			waitIdle(t, bus)
			if err := s.Advance(context.Background(), epoch.Add(3*time.Hour)); err != nil {
				t.Fatal(err)
			}
			results := first.byWindow()
			if len(results) == 0 || s.Stats().Emitted != int64(len(results)) || s.Stats().Dropped != 0 {
				t.Fatalf("first run: %d results, stats %+v", len(results), s.Stats())
			}
			if err := bus.Close(); err != nil {
				t.Fatal(err)
			}

			second := &collector{}
			bus2 := newBus(t, u, second)
			s2 := sumStream(t, bus2, "sums", stream.Tumbling(time.Minute), stream.AllowedLateness(time.Hour))
			if err := bus2.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			n, err := bus2.Replay(context.Background(), s2.Handler(), time.Time{})
			if err != nil || n != len(in) {
				t.Fatalf("Replay = %d, %v; want the %d input events", n, err, len(in))
			}
			waitIdle(t, bus2)
			if err := s2.Advance(context.Background(), epoch.Add(3*time.Hour)); err != nil {
				t.Fatal(err)
			}
			st := s2.Stats()
			if st.Emitted != 0 || st.Republished != int64(len(results)) || st.Conflicts != 0 {
				t.Errorf("re-run stats %+v; want 0 emitted, %d republished, 0 conflicts", st, len(results))
			}
			pub := second.published()
			if len(pub) != len(results) {
				t.Errorf("re-run published %d results, want the %d windows again", len(pub), len(results))
			}
			for _, e := range pub {
				if !e.Duplicate {
					t.Errorf("re-run result %s stored anew, want Publish to return Duplicate=true", e.ID)
				}
			}
		})
	}
}

// TestHopping checks that an event belongs to every hopping window that
// covers it, and that each result carries its window and key.
func TestHopping(t *testing.T) {
	col := &collector{}
	bus := newBus(t, "memory://", col)
	s := sumStream(t, bus, "hops", stream.Hopping(3*time.Minute, time.Minute), stream.AllowedLateness(5*time.Minute))
	ctx := context.Background()
	feed := func(id string, at time.Duration, plan string, amount int64) {
		t.Helper()
		in := input{source: "test", id: id, t: epoch.Add(at), p: payload{Plan: plan, Amount: amount}}
		if err := s.Handle(ctx, in.event()); err != nil {
			t.Fatal(err)
		}
	}
	feed("a", 150*time.Second, "pro", 5) // in [0,3m) [1m,4m) [2m,5m)
	feed("b", 200*time.Second, "pro", 7) // in [1m,4m) [2m,5m) [3m,6m)
	feed("c", 30*time.Second, "free", 1) // in [-2m,1m) [-1m,2m) [0,3m)
	if err := s.Advance(ctx, epoch.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	m := func(min int) time.Time { return epoch.Add(time.Duration(min) * time.Minute) }
	diff(t, col.byWindow(), map[wkey]sums{
		{m(0), "pro"}: {1, 5}, {m(1), "pro"}: {2, 12}, {m(2), "pro"}: {2, 12}, {m(3), "pro"}: {1, 7},
		{m(-2), "free"}: {1, 1}, {m(-1), "free"}: {1, 1}, {m(0), "free"}: {1, 1},
	})
	col.mu.Lock()
	defer col.mu.Unlock()
	for id, r := range col.results {
		if r.Stream != "hops" || r.End.Sub(r.Start) != 3*time.Minute || r.Events != r.Value.N {
			t.Errorf("result %s: %+v", id, r)
		}
		if want := stream.ResultID("hops", resultType, stream.Window{Start: r.Start, End: r.End}, r.Key); id != want {
			t.Errorf("result id %s, want ResultID's %s", id, want)
		}
	}
}

// TestLateness: events within the allowed lateness are counted; an event
// after its window closed is dropped, counted, logged and passed to
// OnLate; a hopping event too late for some windows counts in the others.
func TestLateness(t *testing.T) {
	col := &collector{}
	bus := newBus(t, "memory://", col)
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logBuf}, nil))
	var late []string
	s := sumStream(t, bus, "late", stream.Tumbling(time.Minute), stream.AllowedLateness(10*time.Second),
		stream.WithLogger(logger),
		stream.OnLate(func(e ripple.Event, w stream.Window) {
			late = append(late, e.ID+"@"+w.Start.Format("15:04"))
		}))
	ctx := context.Background()
	feed := func(id string, at time.Duration) {
		t.Helper()
		in := input{source: "test", id: id, t: epoch.Add(at), p: payload{Plan: "pro", Amount: 1}}
		if err := s.Handle(ctx, in.event()); err != nil {
			t.Fatal(err)
		}
	}
	feed("a", 30*time.Second)
	feed("b", 65*time.Second) // watermark 0:55: [0,1m) stays open
	feed("c", 50*time.Second) // 15 s behind, but its window is open: counted
	if n := len(col.byWindow()); n != 0 {
		t.Fatalf("%d results before the watermark passed the window's end", n)
	}
	feed("d", 70*time.Second) // watermark 1:00, the window's end: [0,1m) closes with a, c
	if got := col.byWindow()[wkey{epoch, "pro"}]; got.N != 2 {
		t.Fatalf("window [0,1m) = %+v once closed, want a and c", got)
	}
	feed("e", 59*time.Second) // its window has closed: dropped
	feed("c", 50*time.Second) // a redelivery after the close: dropped too
	st := s.Stats()
	if st.Events != 4 || st.Dropped != 2 || st.Emitted != 1 || st.OpenWindows != 1 {
		t.Errorf("stats %+v; want 4 events, 2 dropped, 1 emitted, 1 open window", st)
	}
	if want := []string{"e@12:00", "c@12:00"}; strings.Join(late, ",") != strings.Join(want, ",") {
		t.Errorf("OnLate calls %v, want %v", late, want)
	}
	logMu.Lock()
	logged := logBuf.String()
	logMu.Unlock()
	if !strings.Contains(logged, "late event dropped") || !strings.Contains(logged, "event=e") {
		t.Errorf("log does not report the dropped event e:\n%s", logged)
	}
	if err := s.Advance(ctx, epoch.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := col.byWindow()[wkey{epoch.Add(time.Minute), "pro"}]; got.N != 2 {
		t.Errorf("window [1m,2m) = %+v, want b and d", got)
	}

	// Hopping: an event may be late for its earlier windows only.
	col2 := &collector{}
	bus2 := newBus(t, "memory://", col2)
	h := sumStream(t, bus2, "late-hops", stream.Hopping(2*time.Minute, time.Minute))
	for _, in := range []input{
		{source: "test", id: "x", t: epoch.Add(150 * time.Second), p: payload{Plan: "pro", Amount: 1}}, // closes [0,2m)
		{source: "test", id: "y", t: epoch.Add(90 * time.Second), p: payload{Plan: "pro", Amount: 1}},  // [0,2m) closed, [1m,3m) open
	} {
		if err := h.Handle(ctx, in.event()); err != nil {
			t.Fatal(err)
		}
	}
	if st := h.Stats(); st.Events != 2 || st.PartlyLate != 1 || st.Dropped != 0 {
		t.Errorf("hopping stats %+v; want 2 events, 1 partly late", st)
	}
	if err := h.Advance(ctx, epoch.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := col2.byWindow()[wkey{epoch.Add(time.Minute), "pro"}]; got.N != 2 {
		t.Errorf("window [1m,3m) = %+v, want x and y", got)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// flakyDriver is a memory driver whose Publish fails while down is set,
// as a broker that is unreachable for a while.
type flakyDriver struct {
	transport.Driver
	mu   sync.Mutex
	down bool
}

func (d *flakyDriver) Publish(ctx context.Context, msgs []*transport.Message) error {
	d.mu.Lock()
	down := d.down
	d.mu.Unlock()
	if down {
		return errors.New("broker unreachable")
	}
	return d.Driver.Publish(ctx, msgs)
}

func (d *flakyDriver) set(down bool) {
	d.mu.Lock()
	d.down = down
	d.mu.Unlock()
}

// TestPublishFailureKeepsWindow: a result that cannot be published fails
// the call and keeps its window; the event that closed it, delivered
// again, is not counted twice, and the result is published once
// publishing works again.
func TestPublishFailureKeepsWindow(t *testing.T) {
	d := &flakyDriver{Driver: memory.New(transport.Retention{})}
	col := &collector{}
	bus, err := ripple.New(d, ripple.WithLogger(quiet), ripple.WithHooks(col))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	s := sumStream(t, bus, "fragile", stream.Tumbling(time.Minute))
	ctx := context.Background()
	feed := func(id string, at time.Duration) error {
		return s.Handle(ctx, input{source: "test", id: id, t: epoch.Add(at), p: payload{Plan: "pro", Amount: 1}}.event())
	}
	if err := feed("a", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	d.set(true)
	err = feed("b", 70*time.Second) // closes [0,1m)
	if err == nil || !strings.Contains(err.Error(), "broker unreachable") {
		t.Fatalf("closing a window while publishing fails: %v, want the publish error", err)
	}
	if st := s.Stats(); st.OpenWindows != 2 || st.Emitted != 0 || st.Events != 2 {
		t.Errorf("after the failed publish: %+v; want both windows still open, nothing emitted", st)
	}
	d.set(false)
	if err := feed("b", 70*time.Second); err != nil { // the retry of b
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Duplicates != 1 || st.Emitted != 1 || st.OpenWindows != 1 {
		t.Errorf("after b's retry: %+v; want b counted once (1 duplicate) and [0,1m) emitted", st)
	}
	if got := col.byWindow()[wkey{epoch, "pro"}]; got.N != 1 {
		t.Errorf("window [0,1m) = %+v, want a alone", got)
	}
}

// TestConfigErrors: a stream with bad or missing arguments is refused at
// registration with an error saying what to pass.
func TestConfigErrors(t *testing.T) {
	bus := newBus(t, "memory://")
	count := func(name, pattern string, opts ...stream.Option) error {
		return stream.New(bus, name, pattern, opts...).Count()
	}
	tum := stream.Tumbling(time.Minute)
	emit := stream.Emit("order.minute.counted")
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"no window", count("s1", "order.placed", emit), "no window"},
		{"two windows", count("s2", "order.placed", emit, tum, stream.Hopping(time.Minute, time.Second)), "more than one window"},
		{"no emit", count("s3", "order.placed", tum), "stream.Emit"},
		{"emit matches pattern", count("s4", "order.>", tum, stream.Emit("order.counted")), "count its own results"},
		{"hop longer than size", count("s5", "order.placed", emit, stream.Hopping(time.Minute, 2*time.Minute)), "hop is longer"},
		{"zero size", count("s6", "order.placed", emit, stream.Tumbling(0)), "must be positive"},
		{"negative lateness", count("s7", "order.placed", emit, tum, stream.AllowedLateness(-time.Second)), "must not be negative"},
		{"bad name", count("Bad Name", "order.placed", emit, tum), "handler name"},
		{"bad emit", count("s8", "order.placed", tum, stream.Emit("Counted")), "Emit"},
		{"two keys", count("s9", "order.placed", tum, emit, stream.KeyBy(func(e ripple.Event) string { return e.Key }),
			stream.KeyByData(func(p payload) string { return p.Plan })), "more than one key"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: %v, want an error mentioning %q", c.name, c.err, c.want)
		}
	}
	s := stream.New(bus, "twice", "order.placed", tum, emit)
	if err := s.Handle(context.Background(), ripple.Event{ID: "x", Time: epoch}); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("Handle before registration: %v", err)
	}
	if err := s.Count(); err != nil {
		t.Fatal(err)
	}
	if err := s.Count(); err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Errorf("second registration: %v", err)
	}
	if err := s.Handle(context.Background(), ripple.Event{ID: "x"}); !ripple.IsPermanent(err) {
		t.Errorf("event without a time: %v, want a Permanent error", err)
	}
}

// TestUnpublishableResultLetGo: a result Publish refuses whatever the
// retries (larger than the bus's MaxEventSize) is logged, counted in
// Unpublished and let go, so that it does not hold every later window
// behind it.
func TestUnpublishableResultLetGo(t *testing.T) {
	var logMu sync.Mutex
	var logBuf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logBuf}, nil))
	bus, err := ripple.Open(context.Background(), "memory://", ripple.WithLogger(quiet), ripple.MaxEventSize(600))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	s := stream.New(bus, "ids", "order.placed", stream.Tumbling(time.Minute), stream.Emit(resultType), stream.WithLogger(logger))
	if err := stream.Reduce(s, func() []string { return nil }, func(ids []string, e ripple.Event) []string { return append(ids, e.ID) }); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 40 { // 40 ids: too large for 600 bytes
		if err := s.Handle(ctx, input{source: "test", id: fmt.Sprintf("event-%03d", i), t: epoch.Add(time.Second)}.event()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Handle(ctx, input{source: "test", id: "next", t: epoch.Add(61 * time.Second)}.event()); err != nil {
		t.Fatalf("closing a window whose result is too large: %v, want the window let go", err)
	}
	if st := s.Stats(); st.Unpublished != 1 || st.Emitted != 0 || st.OpenWindows != 1 {
		t.Errorf("stats %+v; want 1 unpublished, 0 emitted, the next window open", st)
	}
	if err := s.Advance(ctx, epoch.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Emitted != 1 {
		t.Errorf("the next window's result: %+v, want it emitted", st)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logBuf.String(), "refused by Publish") || !strings.Contains(logBuf.String(), "too large") {
		t.Errorf("log does not report the refused result:\n%s", logBuf.String())
	}
}

// TestWindowsBefore1970 checks that windows align on the epoch for
// negative Unix times too: an event 30 s before 1970 is in [-1m, 0).
func TestWindowsBefore1970(t *testing.T) {
	col := &collector{}
	bus := newBus(t, "memory://", col)
	s := sumStream(t, bus, "old", stream.Tumbling(time.Minute))
	ctx := context.Background()
	if err := s.Handle(ctx, input{source: "test", id: "a", t: time.Unix(-30, 0), p: payload{Plan: "pro", Amount: 3}}.event()); err != nil {
		t.Fatal(err)
	}
	if err := s.Advance(ctx, time.Time{}); err == nil {
		t.Error("Advance(zero time) accepted")
	}
	if err := s.Advance(ctx, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	diff(t, col.byWindow(), map[wkey]sums{{time.Unix(-60, 0).UTC(), "pro"}: {1, 3}})
}
