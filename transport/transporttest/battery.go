package transporttest

// The cases in this file check the reliability battery: the semantics the
// rest of the suite checks one event at a time, here under load, across
// buses that come and go, and with faults (panicking, hung and failing
// handlers, graceful shutdowns, a killed publisher). They keep a ledger of
// every acknowledged event and classify each as handled, lost, duplicated
// or unexpected, so that a transport that drops or invents events under
// these conditions fails, not only one that gets a single event wrong.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// ledger records, per event id, how often a handler was called and how
// often it got through to its side effect, and which deliveries came with
// an attempt already used.
type ledger struct {
	mu      sync.Mutex
	calls   map[string]int
	effects map[string]int
	again   []string
}

func newLedger() *ledger {
	return &ledger{calls: map[string]int{}, effects: map[string]int{}}
}

// call records that a handler was called with e.
func (l *ledger) call(e ripple.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls[e.ID]++
	if e.Attempt > 1 {
		l.again = append(l.again, fmt.Sprintf("%s attempt %d", e.ID, e.Attempt))
	}
}

// effect records that the handler's side effect for id happened.
func (l *ledger) effect(id string) {
	l.mu.Lock()
	l.effects[id]++
	l.mu.Unlock()
}

// missing counts the ids without a side effect.
func (l *ledger) missing(ids map[string]bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for id := range ids {
		if l.effects[id] == 0 {
			n++
		}
	}
	return n
}

// waitEffects waits until every id has had its side effect.
func (l *ledger) waitEffects(t testing.TB, what string, ids map[string]bool) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s (%d events)", what, len(ids)), func() bool { return l.missing(ids) == 0 })
}

// check classifies the side effects against the acknowledged ids: lost
// (acknowledged, no side effect), duplicated (more than one side effect)
// and unexpected (a side effect for an id never acknowledged).
func (l *ledger) check(acked map[string]bool) (lost, duplicated, unexpected []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range acked {
		if l.effects[id] == 0 {
			lost = append(lost, id)
		}
	}
	for id, n := range l.effects {
		if n > 1 {
			duplicated = append(duplicated, id)
		}
		if !acked[id] {
			unexpected = append(unexpected, id)
		}
	}
	return lost, duplicated, unexpected
}

// duplicateCalls lists the ids the handler was called for more than once.
func (l *ledger) duplicateCalls() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, n := range l.calls {
		if n > 1 {
			out = append(out, id)
		}
	}
	return out
}

// redelivered lists the deliveries that came with an attempt already used.
func (l *ledger) redelivered() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.again)
}

// firstFew shortens a list of ids for an error message.
func firstFew(ids []string) []string {
	if len(ids) > 5 {
		return ids[:5]
	}
	return ids
}

// ackSet is a set of acknowledged event ids that publishers add to
// concurrently.
type ackSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (a *ackSet) add(id string) {
	a.mu.Lock()
	if a.ids == nil {
		a.ids = map[string]bool{}
	}
	a.ids[id] = true
	a.mu.Unlock()
}

func (a *ackSet) snapshot() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.ids)
}

// loadPayload is what the load cases publish: publisher p's i-th event,
// with key k.
type loadPayload struct {
	P int    `json:"p"`
	I int    `json:"i"`
	K string `json:"k"`
}

// testPublishersCloseUnderLoad: many publishers share one bus and publish
// at once, with keys that overlap, and re-publish some events under the
// same id as a publisher retrying after a lost reply would; the bus is
// closed as soon as the last Publish returns. Every event whose Publish
// returned nil is handled and nothing else is, so a publish path that
// batches and drops or fails its tail on Close is caught. Where the
// transport deduplicates, a re-published id returns the same event and is
// delivered once; where it has claims, an Idempotent handler has one side
// effect per event; where it orders, each publisher's events of a key are
// handled in the order it published them.
func testPublishersCloseUnderLoad(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, effectName, countName = "conformance.load.published", "load.effect", "load.count"
	const publishers, perPublisher, keys = 8, 50, 16
	consumer := s.open(t, url)

	effects := newLedger()
	var omu sync.Mutex
	last := map[string]int{}
	var outOfOrder []string
	opts := []ripple.HandlerOption{ripple.Concurrency(16)}
	if s.caps.Ordered {
		opts = append(opts, ripple.Ordered())
	}
	if s.claimer {
		opts = append(opts, ripple.Idempotent())
	}
	on(t, consumer, typ, effectName, func(_ context.Context, e ripple.Event) error {
		effects.call(e)
		var p loadPayload
		if err := json.Unmarshal(e.Data, &p); err != nil {
			return ripple.Permanent(err)
		}
		if s.caps.Ordered {
			k := fmt.Sprintf("key %s from publisher %d", p.K, p.P)
			omu.Lock()
			if prev, ok := last[k]; ok && p.I <= prev {
				outOfOrder = append(outOfOrder, fmt.Sprintf("%s: event %d handled after event %d", k, p.I, prev))
			}
			last[k] = p.I
			omu.Unlock()
		}
		effects.effect(e.ID)
		return nil
	}, opts...)
	// A plain handler counts deliveries: an Idempotent one skips a second
	// copy of an id before running, so it could not see a failed dedup.
	deliveries := newLedger()
	on(t, consumer, typ, countName, func(_ context.Context, e ripple.Event) error {
		deliveries.call(e)
		deliveries.effect(e.ID)
		return nil
	}, ripple.Concurrency(16))
	start(t, consumer)

	publisher := s.open(t, url)
	var acked ackSet
	var pubErrs, retries atomic.Int64
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range perPublisher {
				pl := loadPayload{P: p, I: i, K: fmt.Sprintf("k%d", (p+i)%keys)}
				popts := []ripple.PublishOption{ripple.WithKey(pl.K)}
				id := fmt.Sprintf("load-%d-%d", p, i)
				if s.caps.Dedup {
					popts = append(popts, ripple.WithID(id))
				}
				ev, err := publisher.Publish(bg, typ, pl, popts...)
				if err != nil {
					pubErrs.Add(1)
					t.Errorf("Publish of publisher %d's event %d: %v", p, i, err)
					continue
				}
				acked.add(ev.ID)
				if !s.caps.Dedup {
					continue
				}
				if ev.ID != id {
					t.Errorf("Publish WithID(%q) returned id %q", id, ev.ID)
				}
				if i%10 == p%10 {
					retries.Add(1)
					again, err := publisher.Publish(bg, typ, pl, popts...)
					if err != nil {
						t.Errorf("Publish of %s again, as a retry: %v", id, err)
					} else if again.ID != id {
						t.Errorf("Publish of %s again, as a retry, returned id %q", id, again.ID)
					}
				}
			}
		})
	}
	wg.Wait()
	if err := publisher.Close(); err != nil {
		t.Errorf("Close of the publishing bus right after its last Publish returned: %v", err)
	}
	if n := pubErrs.Load(); n > 0 {
		t.Fatalf("%d publishes failed on a healthy %s transport", n, s.name)
	}
	all := acked.snapshot()
	if len(all) != publishers*perPublisher {
		t.Fatalf("%d publishes acknowledged %d distinct ids, want one each", publishers*perPublisher, len(all))
	}
	effects.waitEffects(t, "every acknowledged event to be handled", all)
	deliveries.waitEffects(t, "every acknowledged event to reach the counting handler", all)
	s.settled(t, consumer, effectName, countName)

	lost, duplicated, unexpected := effects.check(all)
	_, _, unexpectedDeliveries := deliveries.check(all)
	dupDeliveries := deliveries.duplicateCalls()
	t.Logf("%d publishers, %d events (+%d re-published ids): lost %d, duplicate side effects %d, duplicate deliveries %d, unexpected %d",
		publishers, len(all), retries.Load(), len(lost), len(duplicated), len(dupDeliveries), len(unexpected)+len(unexpectedDeliveries))
	if len(unexpected)+len(unexpectedDeliveries) > 0 {
		t.Errorf("handled events that no Publish acknowledged: %v %v", firstFew(unexpected), firstFew(unexpectedDeliveries))
	}
	if s.claimer && len(duplicated) > 0 {
		t.Errorf("Idempotent handler: %d events had more than one side effect: %v", len(duplicated), firstFew(duplicated))
	}
	if s.caps.Dedup && len(dupDeliveries) > 0 {
		t.Errorf("%d events were delivered more than once; an id published again must not be stored again: %v", len(dupDeliveries), firstFew(dupDeliveries))
	}
	omu.Lock()
	defer omu.Unlock()
	for _, v := range firstFew(outOfOrder) {
		t.Errorf("Ordered handler, out of order: %s", v)
	}
}

// testCloseReopenConsumer: a backlog is worked through by one bus after
// another, each shut down gracefully a few tens of milliseconds after it
// started, in the middle of the backlog. No event is lost between them,
// and since a graceful Shutdown lets running handlers finish and hands
// back what it did not run, no event comes back with an attempt used (an
// event a closing bus left leased would, once its lease ran out).
func testCloseReopenConsumer(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, name = "conformance.reopen.queued", "reopen.worker"
	const total = 400
	publisher := s.open(t, url) // also keeps a non-durable store open between consumers
	l := newLedger()
	consumer := func() *ripple.Bus {
		b := s.open(t, url)
		on(t, b, typ, name, func(_ context.Context, e ripple.Event) error {
			l.call(e)
			time.Sleep(time.Duration(1+rand.IntN(4)) * time.Millisecond)
			l.effect(e.ID)
			return nil
		}, ripple.Concurrency(4))
		start(t, b)
		return b
	}
	// Subscribe first, so that the events published next are the
	// handler's.
	b := consumer()
	if err := b.Shutdown(bg); err != nil {
		t.Fatalf("Shutdown of an idle bus: %v", err)
	}
	acked := map[string]bool{}
	for i := range total {
		acked[publish(t, publisher, typ, map[string]int{"i": i}).ID] = true
	}
	cycles := 0
	// On a loaded machine a consumer's start and shutdown take most of
	// each cycle, so the case fails only when cycles stop making progress.
	deadline, left := time.Now().Add(waitBound), total
	for l.missing(acked) > 0 {
		if m := l.missing(acked); m < left {
			deadline, left = time.Now().Add(waitBound), m
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d close/reopen cycles, %d of %d events were never handled, none for %s", cycles, l.missing(acked), total, waitBound)
		}
		b := consumer()
		time.Sleep(time.Duration(20+rand.IntN(40)) * time.Millisecond)
		ctx, cancel := context.WithTimeout(bg, 10*time.Second)
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("graceful Shutdown of consumer %d: %v", cycles, err)
		}
		cancel()
		cycles++
	}
	again := l.redelivered()
	t.Logf("%d events over %d close/reopen cycles: %d redelivered with an attempt used, %d handled more than once", total, cycles, len(again), len(l.duplicateCalls()))
	if len(again) > 0 {
		t.Errorf("events came back with an attempt used after graceful Shutdowns: %v", firstFew(again))
	}
}

// testConcurrentClose: several buses working one handler's backlog are
// shut down at the same moment. Each Shutdown returns without error, and
// nothing they held is lost or charged an attempt: the events they had
// not finished, and events published afterwards, are all handled by a
// bus opened later, none with an attempt used.
func testConcurrentClose(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, name = "conformance.close.concurrent", "close.worker"
	const buses, events = 6, 150
	publisher := s.open(t, url)
	l := newLedger()
	h := func(_ context.Context, e ripple.Event) error {
		l.call(e)
		time.Sleep(5 * time.Millisecond)
		l.effect(e.ID)
		return nil
	}
	// Subscribe first, so that the events published next are the
	// handler's.
	setup := s.open(t, url)
	on(t, setup, typ, name, h)
	start(t, setup)
	if err := setup.Shutdown(bg); err != nil {
		t.Fatalf("Shutdown of an idle bus: %v", err)
	}
	acked := map[string]bool{}
	for i := range events {
		acked[publish(t, publisher, typ, map[string]int{"i": i}).ID] = true
	}
	var workers []*ripple.Bus
	for range buses {
		b := s.open(t, url)
		on(t, b, typ, name, h, ripple.Concurrency(2))
		start(t, b)
		workers = append(workers, b)
	}
	waitFor(t, "the workers to be in the middle of the backlog", func() bool { return events-l.missing(acked) >= 20 })
	var wg sync.WaitGroup
	for i, b := range workers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(bg, 10*time.Second)
			defer cancel()
			if err := b.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown of bus %d, closed at the same time as %d others: %v", i, buses-1, err)
			}
		})
	}
	wg.Wait()
	left := l.missing(acked)
	for i := range events {
		acked[publish(t, publisher, typ, map[string]int{"i": events + i}).ID] = true
	}
	last := s.open(t, url)
	on(t, last, typ, name, h, ripple.Concurrency(8))
	start(t, last)
	l.waitEffects(t, "every event to be handled after the concurrent close", acked)
	again := l.redelivered()
	t.Logf("%d events left by %d buses closed at once, %d published after; %d redelivered with an attempt used", left, buses, events, len(again))
	if len(again) > 0 {
		t.Errorf("events came back with an attempt used after a graceful Shutdown: %v", firstFew(again))
	}
}

// testContinueAfterErrors: consumers whose handler fails every event, over
// and over, lose none of them: once they are shut down, a healthy consumer
// of the same handler gets every event, as a retry whose attempt counts
// each failed run before it (no more, so a shutdown charged nothing; no
// fewer, so no run went uncounted), and nothing is dead-lettered.
func testContinueAfterErrors(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, name = "conformance.errors.continued", "errors.worker"
	const events = 50
	opts := []ripple.HandlerOption{ripple.MaxAttempts(1000), ripple.Backoff(time.Millisecond, 5*time.Millisecond)}
	publisher := s.open(t, url)
	var fmu sync.Mutex
	failed := map[string]int{}
	var failing []*ripple.Bus
	for range 3 {
		b := s.open(t, url)
		on(t, b, typ, name, func(_ context.Context, e ripple.Event) error {
			fmu.Lock()
			failed[e.ID]++
			fmu.Unlock()
			return errors.New("deliberate failure")
		}, opts...)
		start(t, b)
		failing = append(failing, b)
	}
	var ids []string
	for i := range events {
		ids = append(ids, publish(t, publisher, typ, map[string]int{"i": i}).ID)
	}
	// Three failed runs per event on average, not for every event: a
	// transport that takes due events in publish order lets a few events
	// that fail fast keep newer ones waiting, which is a matter of
	// fairness, not of what this case checks.
	waitFor(t, "the failing consumers to fail the events a few times", func() bool {
		fmu.Lock()
		defer fmu.Unlock()
		n := 0
		for _, c := range failed {
			n += c
		}
		return n >= 3*events
	})
	for _, b := range failing {
		ctx, cancel := context.WithTimeout(bg, 10*time.Second)
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown of a failing consumer: %v", err)
		}
		cancel()
	}
	var rec recorder
	good := s.open(t, url)
	on(t, good, typ, name, rec.handler("", nil), opts...)
	start(t, good)
	rec.waitSucceeded(t, "a healthy consumer to handle every event the failing ones refused", ids...)
	fmu.Lock()
	defer fmu.Unlock()
	total := 0
	for _, id := range ids {
		total += failed[id]
		if c := rec.of(id)[0]; c.ev.Attempt != failed[id]+1 {
			t.Errorf("event %s failed %d times, then reached the healthy consumer with Attempt %d, want %d", id, failed[id], c.ev.Attempt, failed[id]+1)
		}
	}
	t.Logf("%d events failed %d times in all before the healthy consumer took over", events, total)
	if st, ok := s.stats(t, good, name); ok && st.Dead != 0 {
		t.Errorf("Stats counts %d dead letters, want 0", st.Dead)
	}
}

// goroutineLabel is the pprof label that testPanicsNoLeak puts on the
// goroutines a bus starts, to find those still running after Shutdown.
const goroutineLabel = "ripple.transporttest"

// labelledGoroutines returns how many goroutines carry the label
// goroutineLabel=value, and their stacks.
func labelledGoroutines(value string) (int, string) {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
	want := fmt.Sprintf("%q:%q", goroutineLabel, value)
	n := 0
	var stacks []string
	// Each group of identical goroutines is a line "COUNT @ PCS", then
	// "# labels: {...}" when they carry labels, then their stack; the
	// first group follows a header line.
	for _, rec := range strings.Split(buf.String(), "\n\n") {
		lines := strings.Split(rec, "\n")
		for i := 0; i+1 < len(lines); i++ {
			count, rest, ok := strings.Cut(lines[i], " ")
			c, err := strconv.Atoi(count)
			if !ok || err != nil || !strings.HasPrefix(rest, "@") {
				continue
			}
			if strings.HasPrefix(lines[i+1], "# labels: ") && strings.Contains(lines[i+1], want) {
				n += c
				stacks = append(stacks, strings.Join(lines[i:], "\n"))
			}
			break
		}
	}
	return n, strings.Join(stacks, "\n\n")
}

// testPanicsNoLeak: a handler that panics on the first attempt of every
// third event, and on every attempt of one event. Each panic is an
// ordinary failed attempt: the bus keeps working, the others are handled
// on their retry, the always-panicking event runs MaxAttempts times and is
// dead-lettered with the panic in its error. Once the bus has shut down,
// none of the goroutines it started is left, so a panic that skipped a
// deferred release would show as a worker or a receive loop still there.
// The bus's goroutines are told apart from those of the cases running in
// parallel by a pprof label, which goroutines inherit from the one that
// starts them.
func testPanicsNoLeak(t *testing.T, s *suite) {
	const typ, name, maxAttempts = "conformance.panic.repeated", "panic.worker", 3
	label := fmt.Sprintf("%s-%p", t.Name(), t)
	l := newLedger()
	var pmu sync.Mutex
	poisonRuns := 0
	var bus *ripple.Bus
	pprof.Do(bg, pprof.Labels(goroutineLabel, label), func(context.Context) {
		bus = s.open(t, s.h.NewURL(t))
		on(t, bus, typ, name, func(_ context.Context, e ripple.Event) error {
			l.call(e)
			var v struct{ I int }
			_ = json.Unmarshal(e.Data, &v)
			if v.I < 0 {
				pmu.Lock()
				poisonRuns++
				pmu.Unlock()
				panic("conformance: deliberate panic on every attempt")
			}
			if v.I%3 == 0 && e.Attempt == 1 {
				panic(fmt.Sprintf("conformance: deliberate panic on the first attempt of event %d", v.I))
			}
			l.effect(e.ID)
			return nil
		}, ripple.Concurrency(2), ripple.MaxAttempts(maxAttempts), ripple.Backoff(5*time.Millisecond, 10*time.Millisecond))
		start(t, bus)
	})
	if n, _ := labelledGoroutines(label); n == 0 {
		t.Fatalf("no goroutine carries the label of the bus that was just started; the leak check below would see nothing")
	}
	poison := publish(t, bus, typ, map[string]int{"I": -1})
	acked := map[string]bool{}
	for i := range 60 {
		acked[publish(t, bus, typ, map[string]int{"I": i}).ID] = true
	}
	l.waitEffects(t, "every event but the always-panicking one to be handled", acked)
	if s.dlq {
		dead := waitDead(t, bus, name, 1)
		if dead[0].Event.ID != poison.ID || dead[0].Attempts != maxAttempts || !strings.Contains(dead[0].Error, "panic") {
			t.Errorf("dead letter %s after %d attempts with error %q; want %s after %d attempts, with the panic in its error",
				dead[0].Event.ID, dead[0].Attempts, dead[0].Error, poison.ID, maxAttempts)
		}
	}
	s.settled(t, bus, name)
	pmu.Lock()
	if poisonRuns != maxAttempts {
		t.Errorf("the always-panicking event ran %d times, want MaxAttempts (%d)", poisonRuns, maxAttempts)
	}
	pmu.Unlock()
	if err := bus.Shutdown(bg); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	deadline := time.Now().Add(waitBound)
	for {
		n, stacks := labelledGoroutines(label)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines the bus started still run %s after its Shutdown returned:\n%s", n, waitBound, stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testHungHandlerFreesSlot: with Concurrency(1), a handler that ignores
// its cancelled ctx past its Timeout does not keep the only slot: once it
// is abandoned, the other events are handled and its event is retried,
// while the hung call is still running.
func testHungHandlerFreesSlot(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.hung.started", "hung.worker"
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hanging := make(chan struct{}, 1)
	var rec recorder
	on(t, bus, typ, name, rec.handler("", func(_ context.Context, e ripple.Event) error {
		if string(e.Data) == `"hang"` && e.Attempt == 1 {
			hanging <- struct{}{}
			<-release // ignores its ctx, until the case ends
		}
		return nil
	}), ripple.Concurrency(1), ripple.Timeout(200*time.Millisecond), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	start(t, bus)
	hung := publish(t, bus, typ, "hang")
	recv(t, hanging, "the hanging attempt to start")
	ids := []string{hung.ID}
	for i := range 5 {
		ids = append(ids, publish(t, bus, typ, i).ID)
	}
	rec.waitSucceeded(t, "the other events and the retry to run in the slot the hung call gave up", ids...)
	// The recorder lists a call once it returns, and the hung one has not.
	if calls := rec.of(hung.ID); len(calls) != 1 || calls[0].ev.Attempt != 2 {
		t.Errorf("hung event: %v; want its retry, attempt 2, to succeed while attempt 1 still hangs", attempts(calls))
	}
}

// testShutdownStopsNewDeliveries: under load, a graceful Shutdown takes no
// new event: only what a receive already under way holds (at most
// Concurrency events) may still start, running handlers finish, and
// everything else is handed back without an attempt used, for a bus
// opened later to handle.
func testShutdownStopsNewDeliveries(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, name, slots = "conformance.drain.loaded", "drain.worker", 4
	var keeper *ripple.Bus
	if !s.caps.Durable {
		// A non-durable store lives only while a bus has it open.
		keeper = s.open(t, url)
	}
	bus := s.open(t, url)
	l := newLedger()
	var stopping atomic.Bool
	var startedAfter atomic.Int64
	h := func(_ context.Context, e ripple.Event) error {
		if stopping.Load() {
			startedAfter.Add(1)
		}
		l.call(e)
		time.Sleep(20 * time.Millisecond)
		l.effect(e.ID)
		return nil
	}
	on(t, bus, typ, name, h, ripple.Concurrency(slots))
	start(t, bus)
	acked := map[string]bool{}
	for i := range 200 {
		acked[publish(t, bus, typ, map[string]int{"i": i}).ID] = true
	}
	waitFor(t, "some events to be handled", func() bool { return len(acked)-l.missing(acked) >= 20 })
	stopping.Store(true)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	err := bus.Shutdown(ctx)
	cancel()
	drain := time.Since(t0)
	stopping.Store(false)
	if err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	handled := len(acked) - l.missing(acked)
	t.Logf("Shutdown drained in %s; %d handlers started after it was called; %d of %d events handled", drain, startedAfter.Load(), handled, len(acked))
	if n := startedAfter.Load(); n > slots {
		t.Errorf("%d handlers started after Shutdown was called; at most %d (Concurrency, what a receive under way may hold) may, then none", n, slots)
	}
	if handled == len(acked) {
		t.Fatalf("every event was handled before Shutdown returned; it did not stop taking new ones")
	}
	if keeper == nil {
		keeper = s.open(t, url)
	}
	on(t, keeper, typ, name, h, ripple.Concurrency(16))
	start(t, keeper)
	l.waitEffects(t, "every event to be handled after the restart", acked)
	if again := l.redelivered(); len(again) > 0 {
		t.Errorf("events came back with an attempt used after a graceful Shutdown: %v", firstFew(again))
	}
}

// testGracefulShutdownUsesNoAttempt: a handler with MaxAttempts(1) is
// restarted over and over with graceful Shutdowns while events keep
// coming. A graceful Shutdown hands back every event it did not run
// without using an attempt, so no event comes back with Attempt 2 (which
// MaxAttempts(1) would dead-letter after that one delivery more if it
// were used up again), nothing is dead-lettered, and every event is
// handled.
func testGracefulShutdownUsesNoAttempt(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, name, restarts = "conformance.graceful.stopped", "graceful.worker", 25
	publisher := s.open(t, url)
	l := newLedger()
	h := func(_ context.Context, e ripple.Event) error {
		l.call(e)
		l.effect(e.ID)
		return nil
	}
	// The lease is long enough not to run out on a loaded machine, so an
	// event that comes back with an attempt used was left leased by a
	// shutdown; it is short enough to come back within the wait below.
	opts := []ripple.HandlerOption{ripple.MaxAttempts(1), ripple.Lease(5 * time.Second), ripple.Concurrency(4)}
	cur := s.open(t, url)
	on(t, cur, typ, name, h, opts...)
	start(t, cur)
	var acked ackSet
	stop, pubDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ev, err := publisher.Publish(bg, typ, i)
			if err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
			acked.add(ev.ID)
			time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
		}
	}()
	for range restarts {
		time.Sleep(time.Duration(5+rand.IntN(30)) * time.Millisecond)
		ctx, cancel := context.WithTimeout(bg, 10*time.Second)
		if err := cur.Shutdown(ctx); err != nil {
			t.Errorf("graceful Shutdown: %v", err)
		}
		cancel()
		cur = s.open(t, url)
		on(t, cur, typ, name, h, opts...)
		start(t, cur)
	}
	close(stop)
	<-pubDone
	all := acked.snapshot()
	deadline := time.Now().Add(waitBound)
	for l.missing(all) > 0 && time.Now().Before(deadline) {
		time.Sleep(pollEvery)
	}
	lost, _, _ := l.check(all)
	var why []string
	if s.dlq {
		dead, err := cur.DeadLetters(bg, name, 100)
		if err != nil {
			t.Fatalf("DeadLetters: %v", err)
		}
		for _, d := range dead {
			why = append(why, d.Event.ID+": "+d.Error)
		}
	}
	again := l.redelivered()
	t.Logf("%d events over %d graceful restarts: not handled %d, redelivered with an attempt used %d, dead-lettered %d",
		len(all), restarts, len(lost), len(again), len(why))
	if len(again) > 0 || len(why) > 0 || len(lost) > 0 {
		t.Errorf("graceful Shutdowns used attempts: redelivered %v; dead-lettered %d %v; never handled %d %v",
			firstFew(again), len(why), firstFew(why), len(lost), firstFew(lost))
	}
}

// testDuplicateIDAfterPublisherRestart: the transport remembers the ids
// of WithID, not the bus that published them: a bus opened after the
// first was closed (a publisher that restarted and retries what it is not
// sure was stored) publishing the same id stores nothing, also when the
// retry is delayed.
func testDuplicateIDAfterPublisherRestart(t *testing.T, s *suite) {
	if !s.caps.Dedup {
		t.Skipf("the %s transport does not declare Dedup (testPublishDedup checks that WithID is refused)", s.name)
	}
	url := s.h.NewURL(t)
	const typ, name, id = "conformance.dedup.restarted", "restarted.handler", "order-7"
	consumer := s.open(t, url) // also keeps a non-durable store open
	var rec recorder
	on(t, consumer, typ, name, rec.handler("", nil))
	start(t, consumer)
	first := s.open(t, url)
	publish(t, first, typ, map[string]int{"copy": 1}, ripple.WithID(id))
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	restarted := s.open(t, url)
	if ev := publish(t, restarted, typ, map[string]int{"copy": 2}, ripple.WithID(id)); ev.ID != id {
		t.Errorf("Publish WithID(%q) returned id %q", id, ev.ID)
	}
	if s.caps.Delay {
		publish(t, restarted, typ, map[string]int{"copy": 3}, ripple.WithID(id), ripple.WithDelay(50*time.Millisecond))
	}
	rec.waitSucceeded(t, "the event to be handled", id)
	time.Sleep(100 * time.Millisecond) // past the delayed copy's time
	s.settled(t, consumer, name)
	calls := rec.of(id)
	if len(calls) != 1 {
		t.Fatalf("an id published again by a restarted publisher was handled %d times, want once", len(calls))
	}
	if string(calls[0].ev.Data) != `{"copy":1}` {
		t.Errorf("the stored copy has data %s, want the first one published", calls[0].ev.Data)
	}
}

// testRequeueTwiceRunsOnce: requeueing one dead letter from several
// callers at once (two operators, or a retried admin request) moves it
// once and runs it once.
func testRequeueTwiceRunsOnce(t *testing.T, s *suite) {
	if !s.dlq {
		t.Skipf("the %s transport has no dead-letter queue (testCapabilityGaps checks that RequeueDead is refused)", s.name)
	}
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.requeue.raced", "requeue.handler"
	var failing atomic.Bool
	failing.Store(true)
	var rec recorder
	on(t, bus, typ, name, rec.handler("", func(context.Context, ripple.Event) error {
		if failing.Load() {
			return ripple.Permanent(errors.New("deliberate failure"))
		}
		return nil
	}))
	start(t, bus)
	ev := publish(t, bus, typ, map[string]int{})
	waitDead(t, bus, name, 1)
	failing.Store(false)
	var wg sync.WaitGroup
	var moved atomic.Int64
	for range 5 {
		wg.Go(func() {
			n, err := bus.RequeueDead(bg, name, ev.ID)
			if err != nil {
				t.Errorf("RequeueDead: %v", err)
			}
			moved.Add(int64(n))
		})
	}
	wg.Wait()
	rec.waitSucceeded(t, "the requeued event to run", ev.ID)
	s.settled(t, bus, name)
	if n := rec.succeeded()[ev.ID]; moved.Load() != 1 || n != 1 {
		t.Errorf("5 concurrent RequeueDead calls for one dead letter moved %d in all and it ran %d times after; want 1 and 1", moved.Load(), n)
	}
	if dead, err := bus.DeadLetters(bg, name, 10); err != nil || len(dead) != 0 {
		t.Errorf("DeadLetters after the requeued event succeeded: %d, %v; want none", len(dead), err)
	}
}

// testNamesRoundTrip: names outside the grammar (wildcards, system
// prefixes, control and non-ASCII characters, path tricks, empty segments)
// are refused by Publish with ErrInvalidName, whatever the transport would
// make of them, and every shape the grammar accepts, up to the longest,
// reaches exactly the handlers whose patterns match it, once, with its
// type unchanged.
func testNamesRoundTrip(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	for _, n := range []string{"*", ">", "a.*.b", "a.>", "$JS.API.x", "$sys.x", "", ".", "..", "a..b", " a.b", "a.b ", "a.b\n",
		"a.\x01b", "a.b\x7f", "a.b\x00", "../x", "a/../b.c", "ü.x", "a.\u00a0", "a.b#c", "a.b%2e", "a.b\\c"} {
		if _, err := bus.Publish(bg, n, 1); !errors.Is(err, ripple.ErrInvalidName) {
			t.Errorf("Publish(%q): %v, want an error matching ErrInvalidName", n, err)
		}
	}
	long := strings.Repeat("x", 120) + "." + strings.Repeat("y", 134) // 255 bytes, the longest
	good := []string{"a.b", "0.1", "a_b.c-d", "a.b.c.d.e.f.g.h.i.j", "-.-", "_._", long}
	wantTwo := []string{"a.b", "0.1", "a_b.c-d", "-.-", "_._", long}
	var rec recorder
	on(t, bus, ">", "names.all", rec.handler("all", nil))
	on(t, bus, "*.*", "names.two", rec.handler("two", nil))
	start(t, bus)
	for _, n := range good {
		publish(t, bus, n, n)
	}
	waitFor(t, "every accepted name to reach its handlers", func() bool { return len(rec.all()) >= len(good)+len(wantTwo) })
	s.settled(t, bus, "names.all", "names.two")
	var all, two []string
	for _, c := range rec.all() {
		var sent string
		if err := json.Unmarshal(c.ev.Data, &sent); err != nil || sent != c.ev.Type {
			t.Errorf("event published as %q arrived with type %q", sent, c.ev.Type)
		}
		if c.tag == "all" {
			all = append(all, c.ev.Type)
		} else {
			two = append(two, c.ev.Type)
		}
	}
	slices.Sort(all)
	slices.Sort(two)
	good, wantTwo = slices.Sorted(slices.Values(good)), slices.Sorted(slices.Values(wantTwo))
	if !slices.Equal(all, good) {
		t.Errorf("pattern \">\" received %q, want each of %q once", all, good)
	}
	if !slices.Equal(two, wantTwo) {
		t.Errorf("pattern \"*.*\" received %q, want each of %q once", two, wantTwo)
	}
}

// testConsumerScaling: workers of one handler join and leave (graceful
// Shutdown) every 100 ms while events keep coming. Nothing is lost or
// handled that was not published, no event comes back with an attempt used,
// and at the end the transport counts nothing active or waiting.
func testConsumerScaling(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, name, steps = "conformance.scale.worked", "scale.worker", 20
	publisher := s.open(t, url)
	l := newLedger()
	h := func(_ context.Context, e ripple.Event) error {
		l.call(e)
		time.Sleep(time.Duration(1+rand.IntN(5)) * time.Millisecond)
		l.effect(e.ID)
		return nil
	}
	var live []*ripple.Bus
	join := func() {
		b := s.open(t, url)
		// A lease that does not run out on a loaded machine: an event that
		// comes back with an attempt used was left leased by a leaving
		// worker.
		on(t, b, typ, name, h, ripple.Concurrency(4), ripple.Lease(5*time.Second))
		start(t, b)
		live = append(live, b)
	}
	join()
	var acked ackSet
	stop, pubDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ev, err := publisher.Publish(bg, typ, map[string]int{"i": i})
			if err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
			acked.add(ev.ID)
			time.Sleep(time.Millisecond)
		}
	}()
	joins, leaves := 1, 0
	for range steps {
		time.Sleep(100 * time.Millisecond)
		// Between one and four workers, changing at every step.
		if len(live) == 4 || len(live) > 1 && rand.IntN(2) == 0 {
			i := rand.IntN(len(live))
			b := live[i]
			live = slices.Delete(live, i, i+1)
			ctx, cancel := context.WithTimeout(bg, 10*time.Second)
			if err := b.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown of a leaving worker: %v", err)
			}
			cancel()
			leaves++
		} else {
			join()
			joins++
		}
	}
	close(stop)
	<-pubDone
	all := acked.snapshot()
	l.waitEffects(t, "every event to be handled across the joins and leaves", all)
	s.settled(t, live[0], name)
	_, _, unexpected := l.check(all)
	again := l.redelivered()
	t.Logf("%d events, %d joins, %d leaves: %d handled more than once, %d redelivered with an attempt used, %d unexpected",
		len(all), joins, leaves, len(l.duplicateCalls()), len(again), len(unexpected))
	if len(unexpected) > 0 {
		t.Errorf("handled events that no Publish acknowledged: %v", firstFew(unexpected))
	}
	if len(again) > 0 {
		t.Errorf("events came back with an attempt used though every worker left gracefully: %v", firstFew(again))
	}
	if st, ok := s.stats(t, live[0], name); ok && (st.Active != 0 || st.Waiting != 0) {
		t.Errorf("after every event was handled: Stats %+v, want nothing active or waiting", st)
	}
}

// What testCrashConcurrentPublishers and its child agree on.
const (
	roleConcurrentPublishers = "concurrent-publishers"
	concurrentPubType        = "conformance.crash.batched"
	concurrentPubName        = "crash.batch.sink"
	concurrentPublishers     = 8
	intentLinePrefix         = "intent "
)

// runConcurrentPublishers is the child of testCrashConcurrentPublishers:
// several goroutines publish as fast as they can, each printing a key
// before its Publish and the same key once Publish returned nil, until the
// parent kills the process.
func runConcurrentPublishers(bus *ripple.Bus) {
	var mu sync.Mutex
	say := func(line string) {
		mu.Lock()
		fmt.Println(line)
		mu.Unlock()
	}
	for g := range concurrentPublishers {
		go func() {
			for i := 0; ; i++ {
				key := fmt.Sprintf("%d-%d", g, i)
				say(intentLinePrefix + key)
				if _, err := bus.Publish(bg, concurrentPubType, map[string]string{"k": key}); err != nil {
					say("failed " + key + ": " + err.Error())
					continue
				}
				say(ackLinePrefix + key + ackLineSuffix)
			}
		}()
	}
	select {}
}

// testCrashConcurrentPublishers: a process whose goroutines publish
// concurrently (which a transport may group into one write) is killed
// with SIGKILL. Every event whose Publish returned nil is handled; an
// event whose Publish was under way may or may not be, but is handled at
// most once; nothing is handled that no goroutine published.
func testCrashConcurrentPublishers(t *testing.T, s *suite) {
	if !s.caps.Durable {
		t.Skipf("the %s transport does not declare Durable; crash tests apply to durable transports", s.name)
	}
	url := s.h.NewURL(t)
	// The subscription outlives the bus that created it.
	setup := s.open(t, url)
	on(t, setup, concurrentPubType, concurrentPubName, func(context.Context, ripple.Event) error { return nil })
	start(t, setup)
	if err := setup.Shutdown(bg); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	c := s.startChild(t, roleConcurrentPublishers, url)
	killAt := 100 + rand.IntN(200)
	c.waitLines(t, ackLinePrefix, killAt, fmt.Sprintf("the publisher child to acknowledge %d events", killAt))
	c.kill(t)
	intents := map[string]bool{}
	for _, k := range c.linesWith(intentLinePrefix) {
		intents[k] = true
	}
	acked := map[string]bool{}
	for _, l := range c.linesWith(ackLinePrefix) {
		// The last line may have been cut by the kill; only complete
		// lines are acknowledgements.
		if k, ok := strings.CutSuffix(l, ackLineSuffix); ok {
			acked[k] = true
		}
	}

	var mu sync.Mutex
	handled := map[string]int{}
	reader := s.open(t, url)
	on(t, reader, concurrentPubType, concurrentPubName, func(_ context.Context, e ripple.Event) error {
		var v struct{ K string }
		if err := json.Unmarshal(e.Data, &v); err != nil {
			return ripple.Permanent(err)
		}
		mu.Lock()
		handled[v.K]++
		mu.Unlock()
		return nil
	}, ripple.Concurrency(16))
	start(t, reader)
	waitFor(t, fmt.Sprintf("all %d acknowledged events to be handled", len(acked)), func() bool {
		mu.Lock()
		defer mu.Unlock()
		for k := range acked {
			if handled[k] == 0 {
				return false
			}
		}
		return true
	})
	s.settled(t, reader, concurrentPubName)
	mu.Lock()
	defer mu.Unlock()
	var duplicated, unexpected []string
	recovered := 0
	for k, n := range handled {
		if n > 1 {
			duplicated = append(duplicated, k)
		}
		switch {
		case !intents[k]:
			unexpected = append(unexpected, k)
		case !acked[k]:
			recovered++
		}
	}
	t.Logf("killed the publishers after %d started and %d acknowledged publishes: %d handled, of which %d unacknowledged; %d duplicated, %d unexpected",
		len(intents), len(acked), len(handled), recovered, len(duplicated), len(unexpected))
	if len(duplicated) > 0 {
		t.Errorf("events handled more than once after the publisher was killed: %v", firstFew(duplicated))
	}
	if len(unexpected) > 0 {
		t.Errorf("handled events that no publisher goroutine published: %v", firstFew(unexpected))
	}
}
