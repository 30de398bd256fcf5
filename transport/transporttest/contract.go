package transporttest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// pauseQuiet is how long a paused handler is watched for deliveries it
// must not get. The contract gives other processes about a second to
// follow a pause, so a pause from another bus is given that long first.
const (
	pauseQuiet  = 500 * time.Millisecond
	pauseFollow = 1500 * time.Millisecond
)

// testDuplicateReported: publishing an id that is already stored (under
// the same source) returns a nil error and the event that was kept,
// marked Duplicate, with the first publish's data and time (unless the
// harness says duplicates are reported as resent); handlers get the first
// copy, once.
func testDuplicateReported(t *testing.T, s *suite) {
	if !s.caps.Dedup {
		t.Skipf("the %s transport does not declare Dedup (testPublishDedup checks that WithID is refused)", s.name)
	}
	bus := s.open(t, s.h.NewURL(t))
	const typ, name, id = "conformance.duplicate.reported", "duplicate.handler", "dup-7"
	var rec recorder
	on(t, bus, typ, name, rec.handler("", nil))
	start(t, bus)
	first := publish(t, bus, typ, map[string]int{"v": 1}, ripple.WithID(id))
	if first.Duplicate {
		t.Errorf("the first Publish of id %q returned Duplicate=true", id)
	}
	time.Sleep(10 * time.Millisecond) // so that a new time would differ
	again, err := bus.Publish(bg, typ, map[string]int{"v": 2}, ripple.WithID(id))
	if err != nil {
		t.Fatalf("Publish of a stored id: %v, want nil (a duplicate is not an error)", err)
	}
	if !again.Duplicate {
		t.Errorf("Publish of a stored id returned Duplicate=false, want true")
	}
	if again.ID != id || again.Type != typ || again.Source != first.Source {
		t.Errorf("Publish of a stored id returned id %q type %q source %q, want %q %q %q", again.ID, again.Type, again.Source, id, typ, first.Source)
	}
	if !s.h.DuplicateIsResent {
		if string(again.Data) != `{"v":1}` {
			t.Errorf("Publish of a stored id returned data %s, want the kept {\"v\":1}", again.Data)
		}
		if d := again.Time.Sub(first.Time); d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("Publish of a stored id returned time %s, want the kept %s", again.Time.Format(time.RFC3339Nano), first.Time.Format(time.RFC3339Nano))
		}
	}
	rec.waitSucceeded(t, "the event to be handled", id)
	s.settled(t, bus, name)
	calls := rec.of(id)
	if len(calls) != 1 {
		t.Fatalf("an id published twice was handled %d times, want once", len(calls))
	}
	if string(calls[0].ev.Data) != `{"v":1}` {
		t.Errorf("the handler got data %s, want the first copy's", calls[0].ev.Data)
	}
}

// testIdentityIsSourceAndID: an event's identity is its source and id
// (CloudEvents): the same id under two sources is two events, both stored
// and both delivered, and an idempotent handler runs both.
func testIdentityIsSourceAndID(t *testing.T, s *suite) {
	if !s.caps.Dedup {
		t.Skipf("the %s transport does not declare Dedup (testPublishDedup checks that WithID is refused)", s.name)
	}
	bus := s.open(t, s.h.NewURL(t))
	const typ, id = "conformance.identity.sourced", "shared-1"
	var plain, idem recorder
	on(t, bus, typ, "identity.plain", plain.handler("", nil))
	if s.claimer {
		on(t, bus, typ, "identity.idempotent", idem.handler("", nil), ripple.Idempotent())
	}
	start(t, bus)
	a := publish(t, bus, typ, map[string]string{"from": "a"}, ripple.WithID(id), ripple.WithSource("urn:conformance:a"))
	b := publish(t, bus, typ, map[string]string{"from": "b"}, ripple.WithID(id), ripple.WithSource("urn:conformance:b"))
	if a.Duplicate || b.Duplicate {
		t.Errorf("the same id under two sources was reported a duplicate (a=%v b=%v); the sources make them two events", a.Duplicate, b.Duplicate)
	}
	if string(b.Data) != `{"from":"b"}` {
		t.Errorf("Publish under the second source returned data %s, want its own", b.Data)
	}
	sources := func(r *recorder) []string {
		var out []string
		for _, c := range r.all() {
			if c.err == nil {
				out = append(out, c.ev.Source+"="+string(c.ev.Data))
			}
		}
		slices.Sort(out)
		return out
	}
	want := []string{`urn:conformance:a={"from":"a"}`, `urn:conformance:b={"from":"b"}`}
	waitFor(t, "both events to be handled", func() bool { return len(sources(&plain)) >= 2 })
	if s.claimer {
		waitFor(t, "both events to be handled by the idempotent handler", func() bool { return len(sources(&idem)) >= 2 })
	}
	s.settled(t, bus, "identity.plain")
	if got := sources(&plain); !slices.Equal(got, want) {
		t.Errorf("handled %v, want %v", got, want)
	}
	if s.claimer {
		if got := sources(&idem); !slices.Equal(got, want) {
			t.Errorf("the idempotent handler handled %v, want %v (claims must key on source and id)", got, want)
		}
	}
	// Each source's id is still deduplicated.
	if again := publish(t, bus, typ, map[string]string{"from": "a2"}, ripple.WithID(id), ripple.WithSource("urn:conformance:a")); !again.Duplicate || (!s.h.DuplicateIsResent && string(again.Data) != `{"from":"a"}`) {
		t.Errorf("publishing (a, %s) again: Duplicate=%v data %s; want true and the kept {\"from\":\"a\"}", id, again.Duplicate, again.Data)
	}
}

// testEphemeral: an Ephemeral handler gets the events published while it
// runs, beside durable handlers that lose nothing to it, and its
// subscription is gone once its bus closes. A durable subscription is
// never deleted by an ephemeral one of the same name.
func testEphemeral(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ = "conformance.ephemeral.seen"
	nop := func(context.Context, ripple.Event) error { return nil }
	if !s.caps.Ephemeral {
		bus := s.open(t, url)
		s.wantNotSupported(t, "On with Ephemeral()", bus.On(typ, "ephemeral.refused", nop, ripple.Ephemeral()))
		return
	}
	durable := s.open(t, url)
	var kept recorder
	on(t, durable, typ, "ephemeral.durable", kept.handler("", nil))
	start(t, durable)

	tail := s.open(t, url)
	var seen recorder
	on(t, tail, typ, "ephemeral.tail", seen.handler("", nil), ripple.Ephemeral())
	start(t, tail)
	var ids []string
	for i := range 5 {
		ids = append(ids, publish(t, durable, typ, map[string]int{"i": i}).ID)
	}
	seen.waitSucceeded(t, "the ephemeral handler to get every event", ids...)
	kept.waitSucceeded(t, "the durable handler to get every event beside it", ids...)
	if s.inspector {
		if !listed(t, durable, "ephemeral.tail") {
			t.Errorf("Stats does not list the ephemeral handler while it runs")
		}
	}
	if err := tail.Close(); err != nil {
		t.Fatalf("Close of the ephemeral handler's bus: %v", err)
	}
	if s.inspector {
		waitFor(t, "the ephemeral subscription to be gone after its bus closed", func() bool {
			return !listed(t, durable, "ephemeral.tail")
		})
	}
	// Nothing keeps collecting for it; the durable handler goes on.
	more := publish(t, durable, typ, map[string]int{"i": 99})
	kept.waitSucceeded(t, "the durable handler to go on after the ephemeral one left", more.ID)
	if s.inspector && !listed(t, durable, "ephemeral.durable") {
		t.Errorf("Stats no longer lists the durable handler")
	}

	// An ephemeral handler under a durable handler's name must not take
	// the durable subscription with it when it goes.
	other := s.open(t, url)
	err := other.On(typ, "ephemeral.durable", nop, ripple.Ephemeral())
	if err == nil {
		err = other.Start(bg)
	}
	_ = other.Close()
	t.Logf("an ephemeral handler under a durable handler's name: %v", err)
	last := publish(t, durable, typ, map[string]int{"i": 100})
	kept.waitSucceeded(t, "the durable handler to survive an ephemeral one of its name", last.ID)
	if s.inspector && !listed(t, durable, "ephemeral.durable") {
		t.Errorf("an ephemeral handler of the same name deleted the durable subscription")
	}
}

// listed reports whether Stats lists the handler.
func listed(t testing.TB, bus *ripple.Bus, handler string) bool {
	t.Helper()
	all, err := bus.Stats(bg)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	for _, st := range all {
		if st.Handler == handler {
			return true
		}
	}
	return false
}

// pauser reports whether the transport can pause handlers.
func (s *suite) pauser(t testing.TB, bus *ripple.Bus) bool {
	_, ok := s.driver(t, bus).(transport.Pauser)
	return ok
}

// testPause: a paused handler takes nothing while its events wait (Stats
// says paused, with them waiting), loses nothing, and on Resume handles
// them all. A pause made from another bus stops the handler too.
func testPause(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	bus := s.open(t, url)
	const typ, name = "conformance.pause.held", "pause.handler"
	if !s.pauser(t, bus) {
		on(t, bus, typ, name, func(context.Context, ripple.Event) error { return nil })
		start(t, bus)
		s.wantNotSupported(t, "Pause", bus.Pause(bg, name))
		s.wantNotSupported(t, "Resume", bus.Resume(bg, name))
		return
	}
	var rec recorder
	on(t, bus, typ, name, rec.handler("", nil))
	start(t, bus)
	warm := publish(t, bus, typ, map[string]int{"i": -1})
	rec.waitSucceeded(t, "the handler to run before the pause", warm.ID)
	wantErr(t, "Pause of an unknown handler", bus.Pause(bg, "no.such.handler"), ripple.ErrUnknownHandler)

	check := func(pauser *ripple.Bus, follow time.Duration, round int) {
		t.Helper()
		if err := pauser.Pause(bg, name); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if err := pauser.Pause(bg, name); err != nil {
			t.Errorf("Pause of a paused handler: %v, want nil", err)
		}
		time.Sleep(follow)
		before := len(rec.all())
		var ids []string
		for i := range 5 {
			ids = append(ids, publish(t, bus, typ, map[string]int{"round": round, "i": i}).ID)
		}
		time.Sleep(pauseQuiet)
		if n := len(rec.all()) - before; n != 0 {
			t.Errorf("a paused handler ran %d times in %s", n, pauseQuiet)
		}
		if st, ok := s.stats(t, bus, name); ok {
			if !st.Paused {
				t.Errorf("Stats of a paused handler: Paused=false")
			}
			if st.Waiting < int64(len(ids)) {
				t.Errorf("Stats of a paused handler: %d waiting, want %d", st.Waiting, len(ids))
			}
		}
		if err := pauser.Resume(bg, name); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		rec.waitSucceeded(t, "every event published during the pause to be handled after Resume", ids...)
		if st, ok := s.stats(t, bus, name); ok && st.Paused {
			t.Errorf("Stats after Resume: Paused=true")
		}
	}
	check(bus, 0, 1)
	// From another bus on the same store.
	other := s.open(t, url)
	check(other, pauseFollow, 2)
	if err := bus.Resume(bg, name); err != nil {
		t.Errorf("Resume of a handler that is not paused: %v, want nil", err)
	}
}

// testStartFrom: a new handler registered with FromBeginning gets the
// retained events published before it existed; with StartFrom(t), only
// those published at or after t; both then get what comes next. A
// handler that already exists keeps its position whatever From says.
func testStartFrom(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	bus := s.open(t, url)
	const typ = "conformance.history.rebuilt"
	nop := func(context.Context, ripple.Event) error { return nil }
	if !s.caps.StartFrom {
		s.wantNotSupported(t, "On with FromBeginning()", bus.On(typ, "history.beginning", nop, ripple.FromBeginning()))
		s.wantNotSupported(t, "On with StartFrom(t)", bus.On(typ, "history.from", nop, ripple.StartFrom(time.Now())))
		return
	}
	// An existing handler; the events are published before the new
	// handlers exist.
	var existing recorder
	on(t, bus, typ, "history.existing", existing.handler("", nil))
	start(t, bus)
	var old []string
	for i := range 3 {
		old = append(old, publish(t, bus, typ, map[string]int{"old": i}).ID)
	}
	time.Sleep(20 * time.Millisecond)
	mark := time.Now()
	time.Sleep(20 * time.Millisecond)
	var recent []string
	for i := range 2 {
		recent = append(recent, publish(t, bus, typ, map[string]int{"recent": i}).ID)
	}

	late := s.open(t, url)
	var all, since recorder
	on(t, late, typ, "history.beginning", all.handler("", nil), ripple.FromBeginning())
	on(t, late, typ, "history.from", since.handler("", nil), ripple.StartFrom(mark))
	on(t, late, typ, "history.existing", existing.handler("", nil), ripple.FromBeginning())
	start(t, late)
	next := publish(t, bus, typ, map[string]int{"next": 0}).ID
	all.waitSucceeded(t, "FromBeginning to get every earlier event and the next", append(append(slices.Clone(old), recent...), next)...)
	since.waitSucceeded(t, "StartFrom(t) to get the events from t and the next", append(slices.Clone(recent), next)...)
	existing.waitSucceeded(t, "the existing handler to get every event", append(append(slices.Clone(old), recent...), next)...)
	s.settled(t, late, "history.beginning", "history.from", "history.existing")
	for id, n := range existing.succeeded() {
		if n != 1 {
			t.Errorf("an existing handler registered again with FromBeginning handled event %s %d times, want once (it keeps its position)", id, n)
		}
	}
	got := since.succeeded()
	for _, id := range old {
		if got[id] > 0 {
			t.Errorf("StartFrom(t) got event %s published before t", id)
		}
	}
	for id, n := range all.succeeded() {
		if n != 1 {
			t.Errorf("FromBeginning handled event %s %d times, want once", id, n)
		}
	}
}
