package transporttest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// testClaims: the idempotency claim that Idempotent() relies on is atomic:
// of many concurrent claims one wins; a done claim stays done; a failed or
// expired claim can be taken again.
func testClaims(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	if !s.claimer {
		err := bus.On("conformance.claim.taken", "claim.handler", func(context.Context, ripple.Event) error { return nil }, ripple.Idempotent())
		s.wantNotSupported(t, "On with Idempotent()", err)
		return
	}
	c := s.driver(t, bus).(transport.Claimer)
	const h = "claim.handler"
	claim := func(id string, lease time.Duration) transport.ClaimResult {
		t.Helper()
		res, err := c.Claim(bg, h, id, lease)
		if err != nil {
			t.Fatalf("Claim(%q, %q): %v", h, id, err)
		}
		return res
	}

	results := make([]transport.ClaimResult, 16)
	errs := make([]error, len(results))
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() { results[i], errs[i] = c.Claim(bg, h, "event-1", time.Minute) })
	}
	wg.Wait()
	won := 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("concurrent Claim: %v", errs[i])
		}
		switch r {
		case transport.Claimed:
			won++
		case transport.Busy:
		default:
			t.Errorf("concurrent Claim returned %d, want Claimed or Busy", r)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent claims of one event won, want exactly 1", won, len(results))
	}
	if err := c.Finish(bg, h, "event-1", false); err != nil {
		t.Fatalf("Finish(failure): %v", err)
	}
	if r := claim("event-1", time.Minute); r != transport.Claimed {
		t.Errorf("Claim after a failed attempt = %d, want Claimed (%d)", r, transport.Claimed)
	}
	if err := c.Finish(bg, h, "event-1", true); err != nil {
		t.Fatalf("Finish(success): %v", err)
	}
	for range 3 {
		if r := claim("event-1", time.Minute); r != transport.Done {
			t.Errorf("Claim after success = %d, want Done (%d)", r, transport.Done)
		}
	}
	if r, err := c.Claim(bg, "other.handler", "event-1", time.Minute); err != nil || r != transport.Claimed {
		t.Errorf("another handler's Claim of the same event = %d, %v; want Claimed: claims are per handler", r, err)
	}

	// A claim whose holder vanished expires after its lease.
	if r := claim("event-2", 100*time.Millisecond); r != transport.Claimed {
		t.Fatalf("Claim(event-2) = %d, want Claimed", r)
	}
	if r := claim("event-2", time.Minute); r != transport.Busy {
		t.Errorf("second Claim within the lease = %d, want Busy (%d)", r, transport.Busy)
	}
	waitFor(t, "an expired claim to be claimable again", func() bool { return claim("event-2", time.Minute) == transport.Claimed })
}

// testIdempotentRedelivery: an Idempotent handler runs to success at most
// once per event even when the transport delivers the event again: after
// a process crashed between success and acknowledgement, and on replay.
func testIdempotentRedelivery(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.idempotent.charged", "idem.handler"
	if !s.claimer {
		err := bus.On(typ, name, func(context.Context, ripple.Event) error { return nil }, ripple.Idempotent())
		s.wantNotSupported(t, "On with Idempotent()", err)
		return
	}
	d := s.driver(t, bus)
	const lease = 300 * time.Millisecond
	since := time.Now()

	// Another process handles the event successfully and dies before it
	// acknowledges: the delivery comes back after its lease.
	crashed, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: name, Pattern: typ, Lease: lease, MaxAttempts: 5})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer crashed.Close()
	done := publish(t, bus, typ, map[string]string{"which": "done elsewhere"})
	ctx, cancel := context.WithTimeout(bg, waitBound)
	defer cancel()
	if ds, err := crashed.Receive(ctx, 1); err != nil || len(ds) != 1 || ds[0].ID != done.ID {
		t.Fatalf("Receive: %d deliveries, %v; want event %s", len(ds), err, done.ID)
	}
	c := d.(transport.Claimer)
	if r, err := c.Claim(bg, name, transport.IdentityKey(done.Source, done.ID), time.Minute); err != nil || r != transport.Claimed {
		t.Fatalf("Claim = %d, %v; want Claimed", r, err)
	}
	if err := c.Finish(bg, name, transport.IdentityKey(done.Source, done.ID), true); err != nil {
		t.Fatalf("Finish: %v", err)
	}

	var rec recorder
	on(t, bus, typ, name, rec.handler("", func(_ context.Context, e ripple.Event) error {
		if e.Attempt == 1 && string(e.Data) == `{"which":"flaky"}` {
			return errors.New("deliberate failure before success")
		}
		return nil
	}), ripple.Idempotent(), ripple.Lease(lease), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	start(t, bus)
	flaky := publish(t, bus, typ, map[string]string{"which": "flaky"})
	rec.waitSucceeded(t, "an idempotent handler's failed attempt to be retried", flaky.ID)
	if s.inspector {
		waitFor(t, "the redelivered event to be completed without running the handler", func() bool {
			st, _ := s.stats(t, bus, name)
			return st.Waiting == 0 && st.Active == 0 && st.Delayed == 0 && st.Completed >= 2
		})
	} else {
		time.Sleep(lease + quietPeriod)
	}
	if n := len(rec.of(done.ID)); n != 0 {
		t.Errorf("idempotent handler ran %d times for an event another process had already handled, want 0", n)
	}
	if calls := rec.of(flaky.ID); len(calls) != 2 {
		t.Errorf("idempotent handler: %v; want a failure then one success", attempts(calls))
	}

	if !s.replayer {
		return
	}
	n, err := bus.Replay(bg, name, since)
	if err != nil || n < 2 {
		t.Fatalf("Replay = %d, %v; want both events scheduled again", n, err)
	}
	s.settled(t, bus, name)
	if n := len(rec.of(done.ID)); n != 0 {
		t.Errorf("idempotent handler ran %d times for a replayed event handled elsewhere, want 0", n)
	}
	if succ := rec.succeeded()[flaky.ID]; succ != 1 {
		t.Errorf("idempotent handler succeeded %d times for one event after a replay, want once", succ)
	}
}

// testPublishDedup: publishing an event id that the transport remembers
// stores nothing.
func testPublishDedup(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.dedup.published", "dedup.handler"
	if !s.caps.Dedup {
		s.wantNotSupported(t, "Publish WithID", second(bus.Publish(bg, typ, 1, ripple.WithID("dedup-1"))))
		return
	}
	var rec recorder
	on(t, bus, typ, name, rec.handler("", nil))
	start(t, bus)
	first := publish(t, bus, typ, map[string]int{"copy": 1}, ripple.WithID("dedup-1"))
	publish(t, bus, typ, map[string]int{"copy": 2}, ripple.WithID("dedup-1"))
	other := publish(t, bus, typ, map[string]int{"copy": 1}, ripple.WithID("dedup-2"))
	rec.waitSucceeded(t, "the deduplicated events to be handled", first.ID, other.ID)
	// Again after the first copy was handled: still remembered.
	publish(t, bus, typ, map[string]int{"copy": 3}, ripple.WithID("dedup-1"))
	s.settled(t, bus, name)
	if n := len(rec.of("dedup-1")); n != 1 {
		t.Errorf("an id published three times was handled %d times, want once", n)
	}
	if c := rec.of("dedup-1"); len(c) > 0 && string(c[0].ev.Data) != `{"copy":1}` {
		t.Errorf("the stored copy has data %s, want the first one published", c[0].ev.Data)
	}
	if st, ok := s.stats(t, bus, name); ok && st.Completed != 2 {
		t.Errorf("Stats counts %d completed, want 2 (one per distinct id)", st.Completed)
	}
}

// testRetentionCount: completed and dead-lettered history is bounded by
// KeepCompleted and KeepDead counts.
func testRetentionCount(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t), ripple.KeepCompleted(5, time.Hour), ripple.KeepDead(3, time.Hour))
	if !s.inspector {
		s.wantNotSupported(t, "Stats", second(bus.Stats(bg)))
		t.Logf("the %s transport reports no statistics, so retention cannot be observed", s.name)
		return
	}
	var ok, bad recorder
	on(t, bus, "conformance.keep.done", "keep.ok", ok.handler("", nil))
	on(t, bus, "conformance.keep.failed", "keep.bad", bad.handler("", func(context.Context, ripple.Event) error {
		return ripple.Permanent(errors.New("deliberately dead"))
	}))
	start(t, bus)
	var okIDs, badIDs []string
	for i := range 20 {
		okIDs = append(okIDs, publish(t, bus, "conformance.keep.done", map[string]int{"i": i}).ID)
	}
	for i := range 10 {
		badIDs = append(badIDs, publish(t, bus, "conformance.keep.failed", map[string]int{"i": i}).ID)
	}
	ok.waitSucceeded(t, "every event to be handled", okIDs...)
	waitFor(t, "every failing event to be tried", func() bool { return len(bad.all()) >= len(badIDs) })
	var last [2]ripple.HandlerStats
	waitFor(t, "retention to trim history to KeepCompleted(5) and KeepDead(3)", func() bool {
		last[0], _ = s.stats(t, bus, "keep.ok")
		last[1], _ = s.stats(t, bus, "keep.bad")
		return last[0].Completed <= 5 && last[1].Dead <= 3 &&
			last[0].Waiting+last[0].Active+last[0].Delayed+last[1].Waiting+last[1].Active+last[1].Delayed == 0
	})
	if last[0].Completed == 0 || last[1].Dead == 0 {
		t.Errorf("retention kept %d completed and %d dead, want the most recent ones kept (up to 5 and 3)", last[0].Completed, last[1].Dead)
	}
	if dead, err := bus.DeadLetters(bg, "keep.bad", 100); s.dlq && (err != nil || len(dead) > 3) {
		t.Errorf("DeadLetters lists %d events (%v) with KeepDead(3, 1h)", len(dead), err)
	}
}

// testRetentionAge: completed history older than KeepCompleted's age is
// dropped.
func testRetentionAge(t *testing.T, s *suite) {
	const age = 300 * time.Millisecond
	bus := s.open(t, s.h.NewURL(t), ripple.KeepCompleted(1000, age))
	if !s.inspector {
		s.wantNotSupported(t, "Stats", second(bus.Stats(bg)))
		return
	}
	const typ, name = "conformance.keep.aged", "keep.aged"
	var rec recorder
	on(t, bus, typ, name, rec.handler("", nil))
	start(t, bus)
	var ids []string
	for i := range 10 {
		ids = append(ids, publish(t, bus, typ, map[string]int{"i": i}).ID)
	}
	rec.waitSucceeded(t, "every event to be handled", ids...)
	// Keep a trickle of new events going, as a live system would, so that
	// transports which prune when they settle get the chance to.
	deadline := time.Now().Add(waitBound)
	var st ripple.HandlerStats
	for {
		st, _ = s.stats(t, bus, name)
		if st.Completed < 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %d completed events are retained with KeepCompleted(1000, %s); want those older than %s dropped",
				waitBound, st.Completed, age, age)
		}
		publish(t, bus, typ, map[string]string{"tick": time.Now().String()})
		time.Sleep(age / 2)
	}
}

// testReplay: Replay re-delivers a handler's events published at or after
// the given time, and not those before.
func testReplay(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.replay.recorded", "replay.handler"
	var rec, other recorder
	on(t, bus, typ, name, rec.handler("", nil))
	on(t, bus, "conformance.replay.other", "replay.other", other.handler("", nil))
	start(t, bus)
	if !s.replayer {
		s.wantNotSupported(t, "Replay", second(bus.Replay(bg, name, time.Now().Add(-time.Hour))))
		return
	}
	old1 := publish(t, bus, typ, map[string]int{"i": 1})
	old2 := publish(t, bus, typ, map[string]int{"i": 2})
	publish(t, bus, "conformance.replay.other", map[string]int{"i": 0})
	rec.waitSucceeded(t, "the events before the replay point to be handled", old1.ID, old2.ID)
	// Keep clear of the boundary: transports may store times in ms.
	time.Sleep(20 * time.Millisecond)
	since := time.Now()
	time.Sleep(20 * time.Millisecond)
	new1 := publish(t, bus, typ, map[string]int{"i": 3})
	new2 := publish(t, bus, "conformance.replay.other", map[string]int{"i": 4})
	new3 := publish(t, bus, typ, map[string]int{"i": 5})
	rec.waitSucceeded(t, "the events after the replay point to be handled", new1.ID, new3.ID)
	other.waitSucceeded(t, "the other handler's event to be handled", new2.ID)
	// A handler's return is recorded before its outcome is settled, and
	// Replay leaves an event still leased as it is.
	s.settled(t, bus, name)

	n, err := bus.Replay(bg, name, since)
	if err != nil || n != 2 {
		t.Fatalf("Replay(since) = %d, %v; want the 2 events of the handler's pattern published since", n, err)
	}
	waitFor(t, "the replayed events to be handled again", func() bool {
		ok := rec.succeeded()
		return ok[new1.ID] == 2 && ok[new3.ID] == 2
	})
	s.settled(t, bus, name, "replay.other")
	got := rec.succeeded()
	if got[old1.ID] != 1 || got[old2.ID] != 1 || got[new1.ID] != 2 || got[new3.ID] != 2 {
		t.Errorf("handled counts %v; want events before the replay point once and those after twice", countsOf(got, old1, old2, new1, new3))
	}
	if n := len(other.all()); n != 2 {
		t.Errorf("replaying one handler re-delivered to another: it ran %d times, want 2", n)
	}
	if c := rec.of(new1.ID); len(c) == 2 && (c[1].ev.Data == nil || string(c[1].ev.Data) != string(new1.Data)) {
		t.Errorf("replayed event has data %q, want %q", c[1].ev.Data, new1.Data)
	}
	if _, err := bus.Replay(bg, "no.such.handler", since); !errors.Is(err, ripple.ErrUnknownHandler) {
		t.Errorf("Replay of an unknown handler: %v, want an error matching ErrUnknownHandler", err)
	}
}

// testReplayUnfinished: Replay does not deliver a second time an event the
// handler has not finished: one running now, or one still waiting for it.
func testReplayUnfinished(t *testing.T, s *suite) {
	if !s.replayer {
		t.Skip("the transport keeps no history (checked by Replay)")
	}
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.replay.unfinished", "replay.unfinished"
	var rec recorder
	running, release := make(chan struct{}, 1), make(chan struct{})
	on(t, bus, typ, name, rec.handler("", func(ctx context.Context, e ripple.Event) error {
		if string(e.Data) == `"slow"` {
			select {
			case running <- struct{}{}:
			default:
			}
			<-release
		}
		return nil
	}), ripple.Concurrency(1))
	start(t, bus)
	since := time.Now().Add(-time.Second)
	slow := publish(t, bus, typ, "slow")
	recv(t, running, "the first event's handler to start")
	queued := publish(t, bus, typ, "queued") // waits: Concurrency(1)
	if _, err := bus.Replay(bg, name, since); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	close(release)
	rec.waitSucceeded(t, "both events to be handled", slow.ID, queued.ID)
	s.settled(t, bus, name)
	time.Sleep(quietPeriod / 4)
	if got := rec.succeeded(); got[slow.ID] != 1 || got[queued.ID] != 1 {
		t.Errorf("handled counts %v; want each once: Replay must not add a second delivery of an event running or waiting", countsOf(got, slow, queued))
	}
}

// testReplayFinished: Replay delivers again what the handler finished,
// completed or dead-lettered (which leaves the dead-letter queue), and
// leaves a delayed event for its time.
func testReplayFinished(t *testing.T, s *suite) {
	if !s.replayer {
		t.Skip("the transport keeps no history (checked by Replay)")
	}
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.replay.finished", "replay.finished"
	var rec recorder
	var failOnce sync.Map
	on(t, bus, typ, name, rec.handler("", func(_ context.Context, e ripple.Event) error {
		if string(e.Data) == `"dead"` {
			if _, failed := failOnce.LoadOrStore(e.ID, true); !failed {
				return ripple.Permanent(errors.New("refused once"))
			}
		}
		return nil
	}))
	start(t, bus)
	since := time.Now().Add(-time.Second)
	ok := publish(t, bus, typ, "ok")
	dead := publish(t, bus, typ, "dead")
	var later ripple.Event
	if s.caps.Delay {
		later = publish(t, bus, typ, "later", ripple.WithDelay(time.Hour))
	}
	rec.waitSucceeded(t, "the completed event to be handled", ok.ID)
	if s.dlq {
		waitDead(t, bus, name, 1)
	} else {
		waitFor(t, "the failing event to be tried", func() bool { return len(rec.of(dead.ID)) == 1 })
	}
	// A handler's return is recorded before its outcome is settled, and
	// Replay leaves an event still leased as it is.
	if s.inspector {
		waitFor(t, "the completed event to be settled", func() bool {
			st, _ := s.stats(t, bus, name)
			return st.Completed >= 1
		})
	} else {
		time.Sleep(quietPeriod)
	}
	n, err := bus.Replay(bg, name, since)
	if err != nil || n != 2 {
		t.Fatalf("Replay = %d, %v; want 2: the completed and the dead-lettered event", n, err)
	}
	waitFor(t, "both events to be handled again", func() bool {
		got := rec.succeeded()
		return got[ok.ID] == 2 && got[dead.ID] == 1
	})
	time.Sleep(quietPeriod)
	if got := rec.succeeded(); got[ok.ID] != 2 || got[dead.ID] != 1 {
		t.Errorf("handled counts %v; want the completed event twice and the dead-lettered one once more", countsOf(got, ok, dead))
	}
	if s.dlq {
		if dl, err := bus.DeadLetters(bg, name, 10); err != nil || len(dl) != 0 {
			t.Errorf("DeadLetters after the replay = %d, %v; want none: the replayed event left the queue", len(dl), err)
		}
	}
	if s.caps.Delay && len(rec.of(later.ID)) != 0 {
		t.Errorf("the event delayed by an hour ran after Replay; want it left for its time")
	}
}

func countsOf(m map[string]int, evs ...ripple.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, fmt.Sprintf("%s=%d", e.Data, m[e.ID]))
	}
	return out
}

// testUnsubscribe: a deleted subscription gets no more events, loses what
// was queued for it, and leaves other handlers alone; registering the name
// again starts empty.
func testUnsubscribe(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	bus := s.open(t, url)
	const typ = "conformance.unsubscribe.recorded"
	var kept, dropped recorder
	on(t, bus, typ, "unsub.kept", kept.handler("", nil))
	on(t, bus, typ, "unsub.dropped", dropped.handler("", nil))
	start(t, bus)
	if !s.unsub {
		s.wantNotSupported(t, "Unsubscribe", bus.Unsubscribe(bg, "unsub.dropped"))
		return
	}
	first := publish(t, bus, typ, map[string]int{"i": 1})
	kept.waitSucceeded(t, "the kept handler to handle the first event", first.ID)
	dropped.waitSucceeded(t, "the dropped handler to handle the first event", first.ID)

	if err := bus.Unsubscribe(bg, "unsub.dropped"); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	second := publish(t, bus, typ, map[string]int{"i": 2})
	kept.waitSucceeded(t, "the kept handler to handle the second event", second.ID)
	s.settled(t, bus, "unsub.kept")
	if s.inspector {
		all, err := bus.Stats(bg)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		for _, st := range all {
			if st.Handler == "unsub.dropped" {
				t.Errorf("Stats still lists the unsubscribed handler: %+v", st)
			}
		}
	}
	if err := bus.Unsubscribe(bg, "unsub.dropped"); !errors.Is(err, ripple.ErrUnknownHandler) {
		t.Errorf("Unsubscribe of a deleted handler: %v, want ErrUnknownHandler", err)
	}

	// A second process registering the name again starts from nothing.
	again := s.open(t, url)
	var fresh recorder
	on(t, again, typ, "unsub.dropped", fresh.handler("", nil))
	start(t, again)
	third := publish(t, bus, typ, map[string]int{"i": 3})
	fresh.waitSucceeded(t, "the re-registered handler to handle a new event", third.ID)
	kept.waitSucceeded(t, "the kept handler to handle the third event", third.ID)
	s.settled(t, again, "unsub.dropped")
	if got := fresh.succeeded(); got[second.ID] != 0 || got[first.ID] != 0 {
		t.Errorf("the re-registered handler received events from before it subscribed again: %v", countsOf(got, first, second))
	}
	if n := len(dropped.all()); n != 1 {
		t.Errorf("the unsubscribed handler ran %d times, want only the first event", n)
	}
}
