package transporttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// testRetryBackoff: a handler that fails k times then succeeds is called
// k+1 times, with attempts numbered 1..k+1 and waits that respect the
// backoff minimum and grow.
func testRetryBackoff(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const fails = 5
	// A base long enough that the last wait (16 × base) outgrows what a
	// transport's delay polling and a loaded machine add to the first.
	const base = 80 * time.Millisecond
	var rec recorder
	on(t, bus, "conformance.retry.needed", "retry.handler", rec.handler("", func(_ context.Context, e ripple.Event) error {
		if e.Attempt <= fails {
			return fmt.Errorf("deliberate failure %d", e.Attempt)
		}
		return nil
	}), ripple.MaxAttempts(fails+1), ripple.Backoff(base, 10*time.Second))
	start(t, bus)
	pub := publish(t, bus, "conformance.retry.needed", map[string]int{})
	rec.waitSucceeded(t, "the event to succeed after its retries", pub.ID)
	calls := rec.of(pub.ID)
	if len(calls) != fails+1 {
		t.Fatalf("handler ran %d times, want %d: %v", len(calls), fails+1, attempts(calls))
	}
	for i, c := range calls {
		if c.ev.Attempt != i+1 {
			t.Fatalf("call %d has Attempt %d, want %d: %v", i, c.ev.Attempt, i+1, attempts(calls))
		}
	}
	if !s.caps.Delay {
		t.Logf("the %s transport does not declare Delay, so retry waits are not checked", s.name)
		return
	}
	// Wait n follows failure n: base·2^(n-1) with ±20% jitter.
	var gaps []time.Duration
	for i := 1; i < len(calls); i++ {
		gap := calls[i].start.Sub(calls[i-1].end)
		gaps = append(gaps, gap)
		min := time.Duration(float64(base<<(i-1))*0.8) - clockSlack
		if gap < min {
			t.Errorf("retry %d came %s after the failure, before the backoff minimum %s (backoff %s doubling, -20%% jitter)", i, gap, min, base)
		}
	}
	if first, last := gaps[0], gaps[len(gaps)-1]; last <= first {
		t.Errorf("retry waits %v do not grow", gaps)
	}
	t.Logf("retry waits: %v", gaps)
}

// testRetryDoesNotBlock: an event waiting for its retry does not hold back
// the handler's other events, even with Concurrency(1).
func testRetryDoesNotBlock(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	var rec recorder
	on(t, bus, "conformance.block.tested", "block.handler", rec.handler("", func(_ context.Context, e ripple.Event) error {
		if strings.Contains(string(e.Data), "fail") {
			return errors.New("deliberate failure")
		}
		return nil
	}), ripple.Concurrency(1), ripple.Backoff(time.Minute, time.Minute))
	start(t, bus)
	bad := publish(t, bus, "conformance.block.tested", map[string]string{"do": "fail"})
	waitFor(t, "the failing event's first attempt", func() bool { return len(rec.of(bad.ID)) > 0 })
	var ids []string
	for i := range 5 {
		ids = append(ids, publish(t, bus, "conformance.block.tested", map[string]int{"i": i}).ID)
	}
	rec.waitSucceeded(t, "other events to be handled while the failing one waits for its retry", ids...)
	if n := len(rec.of(bad.ID)); s.caps.Delay && n != 1 {
		t.Errorf("failing event ran %d times within its one-minute backoff, want once", n)
	}
}

// testPermanent: a Permanent error dead-letters the event after exactly
// one attempt.
func testPermanent(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	var rec recorder
	const name = "permanent.handler"
	on(t, bus, "conformance.permanent.failed", name, rec.handler("", func(context.Context, ripple.Event) error {
		return ripple.Permanent(errors.New("payload cannot be parsed: xyzzy"))
	}), ripple.MaxAttempts(5), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	start(t, bus)
	pub := publish(t, bus, "conformance.permanent.failed", map[string]int{})
	if !s.dlq {
		waitFor(t, "the handler to run", func() bool { return len(rec.all()) > 0 })
		_, err := bus.DeadLetters(bg, name, 10)
		s.wantNotSupported(t, "DeadLetters on a transport without a dead-letter queue", err)
		s.settled(t, bus, name)
	} else {
		dead := waitDead(t, bus, name, 1)
		if dead[0].Event.ID != pub.ID || dead[0].Attempts != 1 || !strings.Contains(dead[0].Error, "xyzzy") {
			t.Errorf("dead letter: id=%s attempts=%d error=%q; want %s, 1 attempt and the handler's error text",
				dead[0].Event.ID, dead[0].Attempts, dead[0].Error, pub.ID)
		}
	}
	if n := len(rec.of(pub.ID)); n != 1 {
		t.Errorf("handler returning Permanent ran %d times, want once", n)
	}
}

// waitDead waits until the handler's dead-letter queue holds n events.
func waitDead(t testing.TB, bus *ripple.Bus, handler string, n int) []ripple.DeadLetter {
	t.Helper()
	var dead []ripple.DeadLetter
	waitFor(t, fmt.Sprintf("%d dead letters for %s", n, handler), func() bool {
		var err error
		dead, err = bus.DeadLetters(bg, handler, 100)
		if err != nil {
			t.Fatalf("DeadLetters(%q): %v", handler, err)
		}
		return len(dead) >= n
	})
	if len(dead) != n {
		t.Fatalf("DeadLetters(%q) lists %d events, want %d", handler, len(dead), n)
	}
	return dead
}

// testDeadLetters: exhausting MaxAttempts dead-letters an event with its
// attempts, error and times; dead letters can be listed, requeued (with a
// fresh attempt budget) and purged.
func testDeadLetters(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.dead.lettered", "dead.handler"
	var failing atomic.Bool
	failing.Store(true)
	var rec recorder
	on(t, bus, typ, name, rec.handler("", func(_ context.Context, e ripple.Event) error {
		if failing.Load() {
			return fmt.Errorf("boom on attempt %d", e.Attempt)
		}
		return nil
	}), ripple.MaxAttempts(3), ripple.Backoff(10*time.Millisecond, 20*time.Millisecond))
	start(t, bus)
	if !s.dlq {
		for _, err := range []error{
			second(bus.DeadLetters(bg, name, 10)),
			second(bus.RequeueAllDead(bg, name)),
			second(bus.PurgeAllDead(bg, name)),
		} {
			s.wantNotSupported(t, "dead-letter administration on a transport without a dead-letter queue", err)
		}
		return
	}
	before := time.Now()
	var pubs []ripple.Event
	for i := range 3 {
		pubs = append(pubs, publish(t, bus, typ, map[string]int{"i": i}))
	}
	dead := waitDead(t, bus, name, 3)
	after := time.Now()
	byID := map[string]ripple.DeadLetter{}
	for _, d := range dead {
		byID[d.Event.ID] = d
	}
	for _, p := range pubs {
		d, ok := byID[p.ID]
		switch {
		case !ok:
			t.Errorf("event %s is missing from the dead letters %+v", p.ID, dead)
		case d.Attempts != 3 || d.Handler != name || !strings.Contains(d.Error, "boom on attempt 3"):
			t.Errorf("dead letter %s: attempts=%d handler=%q error=%q; want 3, %q and the last error (boom on attempt 3)",
				p.ID, d.Attempts, d.Handler, d.Error, name)
		case d.First.IsZero() || d.DeadAt.Before(d.First) || d.First.Before(before.Add(-time.Second)) || d.DeadAt.After(after.Add(time.Second)):
			t.Errorf("dead letter %s: first attempt %s, dead at %s; want both between %s and %s, first before dead",
				p.ID, d.First, d.DeadAt, before, after)
		case d.Event.Type != typ || string(d.Event.Data) != string(p.Data):
			t.Errorf("dead letter %s holds type %q data %q, want %q %q", p.ID, d.Event.Type, d.Event.Data, typ, p.Data)
		}
	}
	if n := len(rec.all()); n != 9 {
		t.Errorf("handler ran %d times for 3 events with MaxAttempts(3), want 9", n)
	}
	if st, ok := s.stats(t, bus, name); ok && (st.Dead != 3 || st.Failed != 9) {
		t.Errorf("Stats: dead=%d failed=%d, want 3 dead and 9 failed attempts (the last of each included)", st.Dead, st.Failed)
	}

	failing.Store(false)
	if n, err := bus.RequeueDead(bg, name, pubs[0].ID); err != nil || n != 1 {
		t.Fatalf("RequeueDead(one id) = %d, %v; want 1", n, err)
	}
	rec.waitSucceeded(t, "the requeued event to run again", pubs[0].ID)
	if c := rec.of(pubs[0].ID); c[len(c)-1].ev.Attempt != 1 {
		t.Errorf("requeued event ran with Attempt %d, want 1 (a fresh attempt budget)", c[len(c)-1].ev.Attempt)
	}
	if n, err := bus.PurgeDead(bg, name, pubs[1].ID); err != nil || n != 1 {
		t.Fatalf("PurgeDead(one id) = %d, %v; want 1", n, err)
	}
	left := waitDead(t, bus, name, 1)
	if left[0].Event.ID != pubs[2].ID {
		t.Errorf("after requeueing one and purging one, dead letters hold %s, want %s", left[0].Event.ID, pubs[2].ID)
	}
	if n, err := bus.RequeueAllDead(bg, name); err != nil || n != 1 {
		t.Fatalf("RequeueAllDead = %d, %v; want 1", n, err)
	}
	rec.waitSucceeded(t, "every requeued event to run again", pubs[2].ID)
	if n, err := bus.PurgeAllDead(bg, name); err != nil || n != 0 {
		t.Errorf("PurgeAllDead of an empty queue = %d, %v; want 0", n, err)
	}
	if n := len(rec.of(pubs[1].ID)); n != 3 {
		t.Errorf("purged event ran %d times, want only its 3 original attempts", n)
	}
	s.settled(t, bus, name)
	if st, ok := s.stats(t, bus, name); ok && st.Dead != 0 {
		t.Errorf("Stats: dead=%d after requeue and purge, want 0", st.Dead)
	}

	for what, err := range map[string]error{
		"DeadLetters":    second(bus.DeadLetters(bg, "no.such.handler", 10)),
		"RequeueDead":    second(bus.RequeueDead(bg, "no.such.handler", "x")),
		"PurgeDead":      second(bus.PurgeDead(bg, "no.such.handler", "x")),
		"RequeueAllDead": second(bus.RequeueAllDead(bg, "no.such.handler")),
		"PurgeAllDead":   second(bus.PurgeAllDead(bg, "no.such.handler")),
	} {
		wantErr(t, what+" of an unknown handler", err, ripple.ErrUnknownHandler)
	}
}

func second[T any](_ T, err error) error { return err }

// testRetryAfter: RetryAfter replaces the backoff for the next attempt,
// whether it is longer or shorter.
func testRetryAfter(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ = "conformance.throttled.hit"
	const long = 400 * time.Millisecond
	var slow, fast recorder
	on(t, bus, typ, "retryafter.long", slow.handler("", func(_ context.Context, e ripple.Event) error {
		if e.Attempt == 1 {
			return ripple.RetryAfter(long, errors.New("429 too many requests"))
		}
		return nil
	}), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	on(t, bus, typ, "retryafter.short", fast.handler("", func(_ context.Context, e ripple.Event) error {
		if e.Attempt == 1 {
			return ripple.RetryAfter(50*time.Millisecond, errors.New("429 too many requests"))
		}
		return nil
	}), ripple.Backoff(time.Hour, time.Hour))
	start(t, bus)
	pub := publish(t, bus, typ, map[string]int{})
	slow.waitSucceeded(t, "the event to be retried after RetryAfter's delay", pub.ID)
	fast.waitSucceeded(t, "the event to be retried after RetryAfter's short delay rather than the hour-long backoff", pub.ID)
	calls := slow.of(pub.ID)
	if len(calls) != 2 {
		t.Fatalf("handler ran %v, want 2 attempts", attempts(calls))
	}
	if gap := calls[1].start.Sub(calls[0].end); s.caps.Delay && gap < long-clockSlack {
		t.Errorf("retry came %s after RetryAfter(%s)", gap, long)
	}
}

// testDelay: WithDelay and WithDeliverAt events are not delivered before their
// time, and are delivered after it.
func testDelay(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ = "conformance.delay.scheduled"
	var rec recorder
	on(t, bus, typ, "delay.handler", rec.handler("", nil))
	start(t, bus)
	const delay = 400 * time.Millisecond
	if !s.caps.Delay {
		s.wantNotSupported(t, "Publish WithDelay", second(bus.Publish(bg, typ, 1, ripple.WithDelay(delay))))
		s.wantNotSupported(t, "Publish WithDeliverAt in the future", second(bus.Publish(bg, typ, 1, ripple.WithDeliverAt(time.Now().Add(time.Hour)))))
		past := publish(t, bus, typ, 1, ripple.WithDeliverAt(time.Now().Add(-time.Hour)))
		rec.waitSucceeded(t, "an event with WithDeliverAt in the past to be delivered at once", past.ID)
		return
	}
	t0 := time.Now()
	delayed := publish(t, bus, typ, map[string]string{"via": "WithDelay"}, ripple.WithDelay(delay))
	at := time.Now().Add(delay)
	timed := publish(t, bus, typ, map[string]string{"via": "WithDeliverAt"}, ripple.WithDeliverAt(at))
	past := publish(t, bus, typ, map[string]string{"via": "WithDeliverAt past"}, ripple.WithDeliverAt(time.Now().Add(-time.Hour)))
	// Past the year 2262, where a time in int64 nanoseconds wraps around.
	far := publish(t, bus, typ, map[string]string{"via": "WithDeliverAt far"}, ripple.WithDeliverAt(time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)))
	now := publish(t, bus, typ, map[string]string{"via": "none"})
	rec.waitSucceeded(t, "events without delay to be delivered at once", now.ID, past.ID)
	rec.waitSucceeded(t, "delayed events to be delivered after their time", delayed.ID, timed.ID)
	if n := len(rec.of(far.ID)); n != 0 {
		t.Errorf("an event published WithDeliverAt(year 2300) was delivered %d times already", n)
	}
	if c := rec.of(delayed.ID)[0]; c.start.Before(t0.Add(delay - clockSlack)) {
		t.Errorf("WithDelay(%s) event was delivered after %s", delay, c.start.Sub(t0))
	}
	if c := rec.of(timed.ID)[0]; c.start.Before(at.Add(-clockSlack)) {
		t.Errorf("WithDeliverAt event was delivered %s before its time", at.Sub(c.start))
	}
	if first := rec.all()[0].ev.ID; first != now.ID && first != past.ID {
		t.Errorf("the first event handled was %s, want one published without a delay", first)
	}
}

// testPriority: among waiting events a handler takes higher priorities
// first, equal priorities in publish order.
func testPriority(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ = "conformance.priority.ranked"
	if !s.caps.Priority {
		s.wantNotSupported(t, "Publish WithPriority", second(bus.Publish(bg, typ, 1, ripple.WithPriority(5))))
		publish(t, bus, typ, 1, ripple.WithPriority(0)) // the default priority is always accepted
		return
	}
	release, started := make(chan struct{}), make(chan struct{}, 1)
	var rec recorder
	on(t, bus, typ, "priority.handler", rec.handler("", func(ctx context.Context, e ripple.Event) error {
		if e.Priority == 1000 { // the blocker holds the only slot while the others queue up
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return nil
	}), ripple.Concurrency(1))
	start(t, bus)
	blocker := publish(t, bus, typ, "blocker", ripple.WithPriority(1000))
	recv(t, started, "the blocking event to start")
	prios := []int{3, -1, 7, 0, 5, 7, 1, -5, 3}
	var queued []ripple.Event
	for i, p := range prios {
		queued = append(queued, publish(t, bus, typ, map[string]int{"i": i}, ripple.WithPriority(p)))
	}
	close(release)
	ids := []string{blocker.ID}
	for _, e := range queued {
		ids = append(ids, e.ID)
	}
	rec.waitSucceeded(t, "every event to be handled", ids...)
	want := slices.Clone(queued)
	slices.SortStableFunc(want, func(a, b ripple.Event) int { return b.Priority - a.Priority })
	var got, exp []string
	for _, c := range rec.all()[1:] {
		got = append(got, fmt.Sprintf("%d:%s", c.ev.Priority, c.ev.Data))
	}
	for _, e := range want {
		exp = append(exp, fmt.Sprintf("%d:%s", e.Priority, e.Data))
	}
	if rec.all()[0].ev.ID != blocker.ID || !slices.Equal(got, exp) {
		t.Errorf("handled in order (priority:data)\n%v\nwant\n%v", got, exp)
	}
}

// testConcurrency: a handler never runs more than Concurrency(n) events at
// once, and does reach n.
func testConcurrency(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const n = 3
	var running counter
	gate := make(chan struct{})
	var rec recorder
	on(t, bus, "conformance.parallel.run", "parallel.handler", rec.handler("", func(ctx context.Context, e ripple.Event) error {
		running.enter()
		defer running.leave()
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return nil
	}), ripple.Concurrency(n))
	start(t, bus)
	var ids []string
	for i := range 4 * n {
		ids = append(ids, publish(t, bus, "conformance.parallel.run", map[string]int{"i": i}).ID)
	}
	waitFor(t, fmt.Sprintf("%d handler calls to run at once", n), func() bool {
		cur, _ := running.get()
		return cur >= n
	})
	// Give an over-eager runner the chance to start more.
	time.Sleep(100 * time.Millisecond)
	close(gate)
	rec.waitSucceeded(t, "every event to be handled", ids...)
	if _, peak := running.get(); peak != n {
		t.Errorf("at most %d handler calls ran at once with Concurrency(%d)", peak, n)
	}
}

// testRateLimit: RateLimit(n, per) is a sliding window: over 3n waiting
// events, no interval of length per holds more than n handler starts (a
// token bucket with burst n would let 2n start in the first period), on
// one bus and, when the transport shares the limit, across two buses
// running the handler.
func testRateLimit(t *testing.T, s *suite) {
	t.Run("OneBus", func(t *testing.T) { rateLimited(t, s, 1) })
	t.Run("TwoBuses", func(t *testing.T) {
		if !s.caps.SharedRateLimit {
			t.Skipf("the %s transport does not declare SharedRateLimit: its rate limit holds per process", s.name)
		}
		rateLimited(t, s, 2)
	})
}

// rateSlack is how much closer together than per the starts n apart may
// be. A handler starts a little after its slot (a goroutine's wake-up),
// and an earlier start delayed more than a later one brings them closer:
// on a saturated machine, under the race detector, with the slot reserved
// over a network round trip, by up to a few hundred milliseconds. A token
// bucket with burst n is still caught: it starts n at once and one more
// every per/n, so n+2 within per-rateSlack.
const rateSlack = 400 * time.Millisecond

func rateLimited(t *testing.T, s *suite, buses int) {
	const n, per = 4, time.Second
	const total = 3 * n
	url := s.h.NewURL(t)
	const typ, name = "conformance.rate.limited", "rate.handler"
	var rec recorder
	var pub *ripple.Bus
	for range buses {
		bus := s.open(t, url)
		on(t, bus, typ, name, rec.handler("", nil), ripple.RateLimit(n, per), ripple.Concurrency(10))
		start(t, bus)
		pub = bus
	}
	var ids []string
	for i := range total {
		ids = append(ids, publish(t, pub, typ, map[string]int{"i": i}).ID)
	}
	rec.waitSucceeded(t, "every rate-limited event to be handled", ids...)
	var starts []time.Time
	for _, c := range rec.all() {
		starts = append(starts, c.start)
	}
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	// The fullest window: the most starts within per-rateSlack of one.
	best, bestAt := 0, 0
	for i := range starts {
		j := i
		for j < len(starts) && starts[j].Sub(starts[i]) < per-rateSlack {
			j++
		}
		if j-i > best {
			best, bestAt = j-i, i
		}
	}
	if best > n {
		from := starts[bestAt]
		var within []string
		for _, st := range starts[bestAt : bestAt+best] {
			within = append(within, "+"+st.Sub(from).Round(time.Millisecond).String())
		}
		t.Errorf("RateLimit(%d, %s) on %d bus(es): %d handler starts within one %s window from %s (%s), want at most %d",
			n, per, buses, best, per, from.Format("15:04:05.000"), strings.Join(within, " "), n)
	}
	// And the limit does not starve the handler: 3n events take at
	// least two periods.
	if span := starts[len(starts)-1].Sub(starts[0]); span < 2*per-rateSlack {
		t.Errorf("%d events with RateLimit(%d, %s) all started within %s, want at least %s", total, n, per, span, 2*per)
	}
}

// testCrashedAttempts: deliveries that ended without a result (leased,
// never settled, as when the process handling them crashed) count toward
// MaxAttempts, with one delivery more. Once they have used that up the
// event is dead-lettered without running the handler again, so an event
// that kills its process every time does not loop forever.
func testCrashedAttempts(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name, maxAttempts = "conformance.crash.poison", "poison.handler", 3
	const lease = 300 * time.Millisecond
	d := s.driver(t, bus)
	crashed, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: name, Pattern: typ, Lease: lease, MaxAttempts: maxAttempts})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer crashed.Close()
	pub := publish(t, bus, typ, map[string]int{})
	for i := 1; i <= maxAttempts+1; i++ {
		ctx, cancel := context.WithTimeout(bg, waitBound)
		ds, err := crashed.Receive(ctx, 1)
		cancel()
		if err != nil || len(ds) != 1 || ds[0].ID != pub.ID || ds[0].Attempt != i {
			t.Fatalf("crashed delivery %d: %d deliveries, %v; want event %s at attempt %d", i, len(ds), err, pub.ID, i)
		}
		// Never settled: the process handling it died.
	}

	var rec recorder
	on(t, bus, typ, name, rec.handler("", func(context.Context, ripple.Event) error { return nil }),
		ripple.MaxAttempts(maxAttempts), ripple.Lease(lease))
	start(t, bus)
	if !s.dlq {
		time.Sleep(lease + quietPeriod)
	} else {
		waitFor(t, "the event whose attempts are used up to be dead-lettered", func() bool {
			dead, err := bus.DeadLetters(bg, name, 10)
			if err != nil {
				t.Fatalf("DeadLetters: %v", err)
			}
			return len(dead) > 0 || len(rec.of(pub.ID)) > 0
		})
	}
	if n := len(rec.of(pub.ID)); n != 0 {
		t.Fatalf("handler ran %d times for an event whose %d attempts, and one delivery more, had all been used up by crashed deliveries, want 0", n, maxAttempts)
	}
	if s.dlq {
		dead := waitDead(t, bus, name, 1)
		if dead[0].Event.ID != pub.ID || !strings.Contains(dead[0].Error, "attempts used up") {
			t.Errorf("dead letter %s with error %q; want %s, with an error saying its attempts were used up", dead[0].Event.ID, dead[0].Error, pub.ID)
		}
	}
}

// testCrashedOnce: one delivery that ended without a result never costs
// an event its run, even with MaxAttempts(1): a worker killed mid-handler
// is followed by a run of the event.
func testCrashedOnce(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.crash.once", "once.handler"
	const lease = 300 * time.Millisecond
	crashed, err := s.driver(t, bus).Subscribe(bg, transport.SubscriptionSpec{Name: name, Pattern: typ, Lease: lease, MaxAttempts: 1})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer crashed.Close()
	pub := publish(t, bus, typ, map[string]int{})
	ctx, cancel := context.WithTimeout(bg, waitBound)
	ds, err := crashed.Receive(ctx, 1)
	cancel()
	if err != nil || len(ds) != 1 || ds[0].ID != pub.ID {
		t.Fatalf("crashed delivery: %d deliveries, %v; want event %s", len(ds), err, pub.ID)
	}
	// Never settled: the process handling it died.
	var rec recorder
	on(t, bus, typ, name, rec.handler("", nil), ripple.MaxAttempts(1), ripple.Lease(lease))
	start(t, bus)
	rec.waitSucceeded(t, "the event of a crashed delivery to run, with MaxAttempts(1)", pub.ID)
}
