package transporttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

const (
	// waitBound is how long a case waits for something that should happen.
	// It is far above what a healthy transport needs, so that a slow
	// machine never fails a case; a broken transport fails it at the bound.
	waitBound = 20 * time.Second
	// pollEvery is the polling interval of waitFor.
	pollEvery = 5 * time.Millisecond
	// clockSlack tolerates transports that store times at millisecond
	// precision when checking that something did not happen too early.
	clockSlack = 5 * time.Millisecond
	// quietPeriod is how long a transport without statistics is given to
	// show an extra delivery before a case concludes there is none.
	quietPeriod = 300 * time.Millisecond
)

var bg = context.Background()

// open opens a bus on url with the harness's options and closes it when
// the test ends.
func (s *suite) open(t testing.TB, url string, opts ...ripple.Option) *ripple.Bus {
	t.Helper()
	all := []ripple.Option{ripple.WithLogger(testLogger(t))}
	all = append(all, s.h.Options...)
	all = append(all, opts...)
	bus, err := ripple.Open(bg, url, all...)
	if err != nil {
		t.Fatalf("ripple.Open(%q): %v", url, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		_ = bus.Shutdown(ctx)
	})
	return bus
}

// driver returns the bus's driver.
func (s *suite) driver(t testing.TB, bus *ripple.Bus) transport.Driver {
	t.Helper()
	var d transport.Driver
	if !bus.As(&d) || d == nil {
		t.Fatalf("bus.As(*transport.Driver) did not return the driver; a driver with its own As method must also answer *transport.Driver")
	}
	return d
}

func on(t testing.TB, bus *ripple.Bus, pattern, name string, fn ripple.HandlerFunc, opts ...ripple.HandlerOption) {
	t.Helper()
	if err := bus.On(pattern, name, fn, opts...); err != nil {
		t.Fatalf("On(%q, %q): %v", pattern, name, err)
	}
}

func start(t testing.TB, bus *ripple.Bus) {
	t.Helper()
	if err := bus.Start(bg); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func publish(t testing.TB, bus *ripple.Bus, typ string, data any, opts ...ripple.PublishOption) ripple.Event {
	t.Helper()
	ev, err := bus.Publish(bg, typ, data, opts...)
	if err != nil {
		t.Fatalf("Publish(%q): %v", typ, err)
	}
	if ev.ID == "" {
		t.Fatalf("Publish(%q) returned an event without an ID", typ)
	}
	return ev
}

// waitFor polls cond until it holds, failing the test at waitBound.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitBound, what)
		}
		time.Sleep(pollEvery)
	}
}

// recv takes one value from ch, failing the test at waitBound.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitBound):
		t.Fatalf("timed out after %s waiting for %s", waitBound, what)
	}
	panic("unreachable")
}

// wantErr fails unless err matches target.
func wantErr(t testing.TB, what string, err, target error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: got nil error, want one matching %v", what, target)
		return
	}
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %q, want one matching %v", what, err, target)
	}
}

// wantNotSupported fails unless err matches ripple.ErrNotSupported and
// names the transport, so the user knows which transport refused.
func (s *suite) wantNotSupported(t testing.TB, what string, err error) {
	t.Helper()
	wantErr(t, what, err, ripple.ErrNotSupported)
	if err != nil && !strings.Contains(err.Error(), s.name) {
		t.Errorf("%s: error %q does not name the %s transport", what, err, s.name)
	}
}

// call is one finished handler invocation.
type call struct {
	ev    ripple.Event
	start time.Time
	end   time.Time
	err   error
	tag   string
}

// recorder records handler invocations; its handlers are safe for
// concurrent use.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

// handler returns a handler that runs fn (nil means succeed) and records
// the call under tag.
func (r *recorder) handler(tag string, fn ripple.HandlerFunc) ripple.HandlerFunc {
	return func(ctx context.Context, e ripple.Event) (err error) {
		c := call{ev: e, start: time.Now(), tag: tag}
		defer func() {
			c.end, c.err = time.Now(), err
			if p := recover(); p != nil {
				c.err = fmt.Errorf("panic: %v", p)
				r.add(c)
				panic(p)
			}
			r.add(c)
		}()
		if fn != nil {
			return fn(ctx, e)
		}
		return nil
	}
}

func (r *recorder) add(c call) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

func (r *recorder) all() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

// of returns the calls for one event id, in the order they finished.
func (r *recorder) of(id string) []call {
	var out []call
	for _, c := range r.all() {
		if c.ev.ID == id {
			out = append(out, c)
		}
	}
	return out
}

// succeeded counts successful calls per event id.
func (r *recorder) succeeded() map[string]int {
	out := map[string]int{}
	for _, c := range r.all() {
		if c.err == nil {
			out[c.ev.ID]++
		}
	}
	return out
}

// waitSucceeded waits until every id has at least one successful call.
func (r *recorder) waitSucceeded(t testing.TB, what string, ids ...string) {
	t.Helper()
	waitFor(t, what, func() bool {
		ok := r.succeeded()
		for _, id := range ids {
			if ok[id] == 0 {
				return false
			}
		}
		return true
	})
}

// stats returns the handler's statistics, or false when the transport
// keeps none.
func (s *suite) stats(t testing.TB, bus *ripple.Bus, handler string) (ripple.HandlerStats, bool) {
	t.Helper()
	if !s.inspector {
		return ripple.HandlerStats{}, false
	}
	all, err := bus.Stats(bg)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	for _, st := range all {
		if st.Handler == handler {
			return st, true
		}
	}
	t.Fatalf("Stats has no entry for handler %q (got %+v)", handler, all)
	return ripple.HandlerStats{}, false
}

// settled waits until the handlers have nothing waiting, leased or
// delayed, so that a case may conclude that no further delivery is coming.
// Without statistics it waits quietPeriod instead.
func (s *suite) settled(t testing.TB, bus *ripple.Bus, handlers ...string) {
	t.Helper()
	if !s.inspector {
		time.Sleep(quietPeriod)
		return
	}
	for _, h := range handlers {
		waitFor(t, "handler "+h+" to have no waiting, active or delayed events", func() bool {
			st, _ := s.stats(t, bus, h)
			return st.Waiting == 0 && st.Active == 0 && st.Delayed == 0
		})
	}
}

// testLogger sends the bus's log to t.Log, where it shows for failed or
// verbose tests, and drops it once the test is over, because a handler
// abandoned by a case may still log after that.
func testLogger(t testing.TB) *slog.Logger {
	w := &tlogWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct {
	mu      sync.Mutex
	t       testing.TB
	stopped bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tlogWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
