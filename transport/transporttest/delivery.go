package transporttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// testRoundTrip: every envelope field a publisher sets reaches the handler
// unchanged, and the data bytes are exact.
func testRoundTrip(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	got := make(chan ripple.Event, 4)
	on(t, bus, "conformance.envelope.checked", "envelope.check", func(_ context.Context, e ripple.Event) error {
		got <- e
		return nil
	})
	start(t, bus)

	raw := []byte{0x00, 0x01, 0xff, 0xfe, '\n', '"', '{', 0x80, 'x'}
	opts := []ripple.PublishOption{
		ripple.WithSource("urn:ripple:conformance"),
		ripple.WithVersion(3),
		ripple.WithCorrelationID("corr-0001"),
		ripple.WithCausationID("cause-0002"),
		ripple.WithKey("key-0003"),
		ripple.WithHeader("tenant", "acme"),
		ripple.WithHeader("region", "eu1"),
		ripple.WithContentType("application/x-conformance"),
	}
	if s.caps.Priority {
		opts = append(opts, ripple.WithPriority(7))
	}
	if s.caps.Dedup {
		opts = append(opts, ripple.WithID("conformance-envelope-0001"))
	}
	pub := publish(t, bus, "conformance.envelope.checked", raw, opts...)
	if s.caps.Dedup && pub.ID != "conformance-envelope-0001" {
		t.Errorf("Publish with WithID returned id %q, want conformance-envelope-0001", pub.ID)
	}
	e := recv(t, got, "the published event to reach its handler")
	checkEnvelope(t, "raw event", pub, e)
	if e.Source != "urn:ripple:conformance" || e.DataVersion != 3 || e.CorrelationID != "corr-0001" ||
		e.CausationID != "cause-0002" || e.Key != "key-0003" || e.DataContentType != "application/x-conformance" {
		t.Errorf("handler got source=%q version=%d correlation=%q causation=%q key=%q content-type=%q; want the values published",
			e.Source, e.DataVersion, e.CorrelationID, e.CausationID, e.Key, e.DataContentType)
	}
	if s.caps.Priority && e.Priority != 7 {
		t.Errorf("handler got priority %d, want 7", e.Priority)
	}
	if e.Attempt != 1 || e.Handler != "envelope.check" {
		t.Errorf("handler got Attempt=%d Handler=%q, want 1 and envelope.check", e.Attempt, e.Handler)
	}

	// A JSON payload with the bus's defaults.
	type payload struct {
		Name string   `json:"name"`
		N    int      `json:"n"`
		Tags []string `json:"tags"`
	}
	in := payload{Name: "Zoë \u2603 \"quoted\"", N: -42, Tags: []string{"a", "b"}}
	pub2 := publish(t, bus, "conformance.envelope.checked", in)
	e2 := recv(t, got, "the JSON event to reach its handler")
	checkEnvelope(t, "JSON event", pub2, e2)
	var out payload
	if err := e2.Decode(&out); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if out.Name != in.Name || out.N != in.N || !slices.Equal(out.Tags, in.Tags) {
		t.Errorf("decoded %+v, want %+v", out, in)
	}
	if e2.DataContentType != "application/json" || e2.Source == "" || e2.CorrelationID != pub2.ID ||
		e2.CausationID != "" || e2.Key != "" || e2.DataVersion != 0 || len(e2.Headers) != 0 {
		t.Errorf("default envelope: content-type=%q source=%q correlation=%q (id %q) causation=%q key=%q version=%d headers=%v; want application/json, the bus's source, the event's own id, and no causation, key, version or headers",
			e2.DataContentType, e2.Source, e2.CorrelationID, pub2.ID, e2.CausationID, e2.Key, e2.DataVersion, e2.Headers)
	}
	if pub.ID == pub2.ID {
		t.Errorf("two publishes got the same id %q", pub.ID)
	}
}

// checkEnvelope compares what a handler received with what Publish
// returned.
func checkEnvelope(t *testing.T, what string, pub, got ripple.Event) {
	t.Helper()
	if got.ID != pub.ID || got.Type != pub.Type || got.Source != pub.Source ||
		got.DataContentType != pub.DataContentType || got.DataVersion != pub.DataVersion ||
		got.CorrelationID != pub.CorrelationID || got.CausationID != pub.CausationID ||
		got.Key != pub.Key || got.TraceParent != pub.TraceParent {
		t.Errorf("%s: handler got\n%+v\nwant the published envelope\n%+v", what, envelopeOf(got), envelopeOf(pub))
	}
	if !maps.Equal(got.Headers, pub.Headers) {
		t.Errorf("%s: handler got headers %v, want %v", what, got.Headers, pub.Headers)
	}
	if !bytes.Equal(got.Data, pub.Data) {
		t.Errorf("%s: handler got data %q, want exactly %q", what, got.Data, pub.Data)
	}
	if d := got.Time.Sub(pub.Time); got.Time.IsZero() || d > time.Millisecond || d < -time.Millisecond {
		t.Errorf("%s: handler got time %s, want the published %s (within 1ms)", what, got.Time, pub.Time)
	}
}

func envelopeOf(e ripple.Event) string {
	return fmt.Sprintf("id=%q type=%q source=%q content-type=%q version=%d correlation=%q causation=%q key=%q traceparent=%q",
		e.ID, e.Type, e.Source, e.DataContentType, e.DataVersion, e.CorrelationID, e.CausationID, e.Key, e.TraceParent)
}

// testCausation: Publish with a handler's ctx passes on the correlation id
// and sets the causation id, without the user doing anything.
func testCausation(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	got := make(chan ripple.Event, 4)
	on(t, bus, "conformance.chain.started", "chain.first", func(ctx context.Context, e ripple.Event) error {
		_, err := bus.Publish(ctx, "conformance.chain.continued", map[string]string{"from": e.ID})
		return err
	})
	on(t, bus, "conformance.chain.continued", "chain.second", func(_ context.Context, e ripple.Event) error {
		got <- e
		return nil
	})
	start(t, bus)

	root := publish(t, bus, "conformance.chain.started", map[string]int{"step": 1})
	if root.CorrelationID != root.ID {
		t.Errorf("an event published outside a handler has correlation id %q, want its own id %q", root.CorrelationID, root.ID)
	}
	child := recv(t, got, "the event published by the first handler")
	if child.CorrelationID != root.ID || child.CausationID != root.ID {
		t.Errorf("event published inside a handler: correlation=%q causation=%q, want both %q (the handled event's correlation id and id)",
			child.CorrelationID, child.CausationID, root.ID)
	}

	root2 := publish(t, bus, "conformance.chain.started", map[string]int{"step": 1}, ripple.WithCorrelationID("request-77"))
	child2 := recv(t, got, "the second event published by the first handler")
	if child2.CorrelationID != "request-77" || child2.CausationID != root2.ID {
		t.Errorf("event published inside a handler: correlation=%q causation=%q, want request-77 and %q",
			child2.CorrelationID, child2.CausationID, root2.ID)
	}
}

// testDurableReopen: on a durable transport, a subscription and the events
// published for it outlive every bus: a bus opened later handles them.
func testDurableReopen(t *testing.T, s *suite) {
	if !s.caps.Durable {
		t.Skipf("the %s transport does not declare Durable; its events do not outlive the process", s.name)
	}
	url := s.h.NewURL(t)
	const typ, name = "conformance.durable.stored", "durable.reader"

	first := s.open(t, url)
	on(t, first, typ, name, func(context.Context, ripple.Event) error { return nil })
	start(t, first)
	if err := first.Shutdown(bg); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	publisher := s.open(t, url)
	var ids []string
	for i := range 5 {
		ids = append(ids, publish(t, publisher, typ, map[string]int{"i": i}).ID)
	}
	if err := publisher.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	var rec recorder
	reader := s.open(t, url)
	on(t, reader, typ, name, rec.handler("", nil))
	start(t, reader)
	rec.waitSucceeded(t, "events published while no bus was running to reach a bus opened later", ids...)
}

// testFanOut: every handler name gets every event, exactly once.
func testFanOut(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	var a, b recorder
	on(t, bus, "conformance.fan.out", "fan.a", a.handler("", nil))
	on(t, bus, "conformance.fan.out", "fan.b", b.handler("", nil))
	start(t, bus)
	var ids []string
	for i := range 20 {
		ids = append(ids, publish(t, bus, "conformance.fan.out", map[string]int{"i": i}).ID)
	}
	a.waitSucceeded(t, "handler fan.a to get every event", ids...)
	b.waitSucceeded(t, "handler fan.b to get every event", ids...)
	s.settled(t, bus, "fan.a", "fan.b")
	for name, r := range map[string]*recorder{"fan.a": &a, "fan.b": &b} {
		if n := len(r.all()); n != len(ids) {
			t.Errorf("handler %s ran %d times for %d events, want each event exactly once", name, n, len(ids))
		}
	}
}

// testIsolation: each delivery has its own copy of the event: a
// publisher reusing its buffer or a handler scribbling on its event
// changes nothing that another handler, a retry or a replay sees.
func testIsolation(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ = "conformance.isolation.checked"
	original := []byte("original payload")
	var rec recorder
	scribble := func(_ context.Context, e ripple.Event) error {
		ok := bytes.Equal(e.Data, original) && e.Headers["tenant"] == "acme"
		seen := fmt.Sprintf("data %q headers %v", e.Data, e.Headers)
		for i := range e.Data {
			e.Data[i] = 'X'
		}
		if e.Headers != nil {
			e.Headers["tenant"] = "scribbled"
		}
		if !ok {
			return ripple.Permanent(fmt.Errorf("got %s, want data %q and tenant=acme", seen, original))
		}
		if e.Attempt == 1 {
			return errors.New("deliberate failure, to see the retry's copy")
		}
		return nil
	}
	for i := range 3 {
		on(t, bus, typ, fmt.Sprintf("isolation.h%d", i), rec.handler("", scribble), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	}
	start(t, bus)
	buf := bytes.Clone(original)
	pub := publish(t, bus, typ, buf, ripple.WithHeader("tenant", "acme"))
	for i := range buf {
		buf[i] = 'P' // the publisher reuses its buffer
	}
	for i := range pub.Data {
		pub.Data[i] = 'R' // and scribbles on the returned event
	}
	waitFor(t, "every handler to finish with the event", func() bool {
		n := 0
		for _, c := range rec.all() {
			if c.err == nil || ripple.IsPermanent(c.err) {
				n++
			}
		}
		return n == 3
	})
	for _, c := range rec.all() {
		if ripple.IsPermanent(c.err) {
			t.Errorf("handler %s attempt %d: %v", c.ev.Handler, c.ev.Attempt, c.err)
		}
	}
}

// testWildcards: "*" matches exactly one segment, ">" one or more trailing
// segments, and neither over-matches.
func testWildcards(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	types := []string{"order.created", "order.item.paid", "order.item.added", "user.created", "orders.created", "order.item.paid.late"}
	want := map[string][]string{
		"order.*":       {"order.created"},
		"order.>":       {"order.created", "order.item.paid", "order.item.added", "order.item.paid.late"},
		">":             types,
		"*.created":     {"order.created", "user.created", "orders.created"},
		"order.*.paid":  {"order.item.paid"},
		"order.created": {"order.created"},
		"*.*":           {"order.created", "user.created", "orders.created"},
		"*.item.>":      {"order.item.paid", "order.item.added", "order.item.paid.late"},
	}
	recs := map[string]*recorder{}
	names := map[string]string{}
	i := 0
	for pattern := range want {
		i++
		name := fmt.Sprintf("wild.h%d", i)
		recs[pattern], names[pattern] = &recorder{}, name
		on(t, bus, pattern, name, recs[pattern].handler("", nil))
	}
	start(t, bus)
	for _, typ := range types {
		publish(t, bus, typ, map[string]string{"type": typ})
	}
	for pattern, types := range want {
		waitFor(t, fmt.Sprintf("pattern %q to receive %v", pattern, types), func() bool {
			return len(recs[pattern].all()) >= len(types)
		})
	}
	s.settled(t, bus, slices.Collect(maps.Values(names))...)
	for pattern, types := range want {
		var got []string
		for _, c := range recs[pattern].all() {
			got = append(got, c.ev.Type)
		}
		sort.Strings(got)
		exp := slices.Clone(types)
		sort.Strings(exp)
		if !slices.Equal(got, exp) {
			t.Errorf("pattern %q received %v, want exactly %v", pattern, got, exp)
		}
	}
}

// testCompetingConsumers: two buses on one store registering the same
// handler name share its events: each is handled once, and both work.
func testCompetingConsumers(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	var rec recorder
	const typ, name = "conformance.work.queued", "compete.worker"
	// Each bus's calls wait until the other bus has started one too: a
	// bus that may take everything can only pass by sharing. The wait is
	// bounded, and a bus left without work fails the check below.
	startedA, startedB := make(chan struct{}), make(chan struct{})
	var onceA, onceB sync.Once
	work := func(mine chan struct{}, once *sync.Once, other chan struct{}) ripple.HandlerFunc {
		return func(ctx context.Context, _ ripple.Event) error {
			once.Do(func() { close(mine) })
			select {
			case <-other:
			case <-ctx.Done():
			case <-time.After(waitBound / 2):
			}
			return nil
		}
	}
	busA, busB := s.open(t, url), s.open(t, url)
	on(t, busA, typ, name, rec.handler("A", work(startedA, &onceA, startedB)), ripple.Concurrency(2))
	on(t, busB, typ, name, rec.handler("B", work(startedB, &onceB, startedA)), ripple.Concurrency(2))
	start(t, busA)
	start(t, busB)
	var ids []string
	for i := range 100 {
		ids = append(ids, publish(t, busA, typ, map[string]int{"i": i}).ID)
	}
	rec.waitSucceeded(t, "every event to be handled by one of the two buses", ids...)
	s.settled(t, busA, name)
	perBus := map[string]int{}
	for id, n := range rec.succeeded() {
		if n != 1 {
			t.Errorf("event %s was handled %d times by the competing consumers, want once", id, n)
		}
	}
	for _, c := range rec.all() {
		perBus[c.tag]++
	}
	if perBus["A"] == 0 || perBus["B"] == 0 {
		t.Errorf("handled per bus: %v; want both buses to share the work", perBus)
	}
	t.Logf("handled per bus: %v", perBus)
}

// testLeaseExpiry: a delivery that is neither settled nor renewed (its
// process crashed) is delivered again after its lease, with the attempt
// counted, and the stale lease can no longer settle it.
func testLeaseExpiry(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	d := s.driver(t, bus)
	const lease = 300 * time.Millisecond
	spec := transport.SubscriptionSpec{Name: "lease.victim", Pattern: "conformance.lease.expired", Lease: lease, MaxAttempts: 5}
	// A receiver that takes the event and then behaves as if its process
	// had died: it never settles and never renews.
	crashed, err := d.Subscribe(bg, spec)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer crashed.Close()

	pub := publish(t, bus, spec.Pattern, map[string]string{"k": "v"})
	ctx, cancel := context.WithTimeout(bg, waitBound)
	defer cancel()
	leased := time.Now()
	ds, err := crashed.Receive(ctx, 1)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Receive: %d deliveries, %v; want the published event", len(ds), err)
	}
	if ds[0].ID != pub.ID || ds[0].Attempt != 1 {
		t.Fatalf("Receive got id %s attempt %d, want %s attempt 1", ds[0].ID, ds[0].Attempt, pub.ID)
	}

	var rec recorder
	redelivered, proceed := make(chan struct{}, 1), make(chan struct{})
	on(t, bus, spec.Pattern, spec.Name, rec.handler("", func(ctx context.Context, e ripple.Event) error {
		redelivered <- struct{}{}
		select {
		case <-proceed:
		case <-ctx.Done():
		}
		return nil
	}), ripple.Lease(lease))
	start(t, bus)
	recv(t, redelivered, "the event to be delivered again after its lease ran out")
	// The crashed receiver comes back and settles its stale lease while
	// the new delivery runs: the settlement must be ignored, not
	// dead-letter the event under the new holder.
	if err := crashed.Settle(bg, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Dead, Error: "stale lease"}}); err != nil {
		t.Errorf("Settle with a lost lease returned %v; the contract says it is ignored without error", err)
	}
	if err := crashed.Extend(bg, ds, time.Hour); err != nil {
		t.Errorf("Extend of a lost lease returned %v; it should be ignored", err)
	}
	close(proceed)
	rec.waitSucceeded(t, "the redelivered event to be handled", pub.ID)
	c := rec.of(pub.ID)[0]
	if c.ev.Attempt != 2 {
		t.Errorf("redelivery after a lost lease has Attempt %d, want 2", c.ev.Attempt)
	}
	if early := leased.Add(lease - clockSlack).Sub(c.start); early > 0 {
		t.Errorf("event was delivered again %s before its %s lease ran out", early, lease)
	}
	s.settled(t, bus, spec.Name)
	if s.dlq {
		dead, err := bus.DeadLetters(bg, spec.Name, 10)
		if err != nil {
			t.Fatalf("DeadLetters: %v", err)
		}
		if len(dead) != 0 {
			t.Errorf("a settlement of a lost lease dead-lettered the event: %+v", dead)
		}
	}
	if st, ok := s.stats(t, bus, spec.Name); ok && (st.Completed != 1 || st.Dead != 0) {
		t.Errorf("Stats: completed=%d dead=%d, want the event completed by its new holder", st.Completed, st.Dead)
	}
	if n := len(rec.all()); n != 1 {
		t.Errorf("handler ran %d times, want once", n)
	}
}

// testLeaseRenewal: a handler that runs longer than its lease, in a live
// process, keeps its event: the lease is renewed and no other receiver
// gets it meanwhile.
func testLeaseRenewal(t *testing.T, s *suite) {
	url := s.h.NewURL(t)
	const typ, name = "conformance.lease.renewed", "renew.handler"
	// Renewal comes every third of a lease, so a renewal may be late by
	// two thirds of one before the lease is lost.
	const lease = 450 * time.Millisecond
	var rec recorder
	slow := func(ctx context.Context, e ripple.Event) error {
		select {
		case <-time.After(3 * lease):
		case <-ctx.Done():
		}
		return nil
	}
	busA, busB := s.open(t, url), s.open(t, url)
	on(t, busA, typ, name, rec.handler("A", slow), ripple.Lease(lease), ripple.Concurrency(2))
	on(t, busB, typ, name, rec.handler("B", slow), ripple.Lease(lease), ripple.Concurrency(2))
	start(t, busA)
	start(t, busB)
	pub := publish(t, busA, typ, map[string]int{})
	rec.waitSucceeded(t, "the slow handler to finish", pub.ID)
	s.settled(t, busA, name)
	if calls := rec.of(pub.ID); len(calls) != 1 {
		t.Errorf("a handler running 3 leases long was called %d times (%v); its lease must be renewed while it runs", len(calls), attempts(calls))
	}
}

// testTimeoutRedelivery: a handler that overruns its Timeout has its ctx
// cancelled, and the event is tried again with the attempt counted.
func testTimeoutRedelivery(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	var rec recorder
	const timeout = 150 * time.Millisecond
	on(t, bus, "conformance.slow.started", "slow.handler", rec.handler("", func(ctx context.Context, e ripple.Event) error {
		if e.Attempt == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}), ripple.Timeout(timeout), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	start(t, bus)
	pub := publish(t, bus, "conformance.slow.started", map[string]int{})
	rec.waitSucceeded(t, "the event to be retried after its first attempt timed out", pub.ID)
	calls := rec.of(pub.ID)
	if len(calls) != 2 || calls[0].ev.Attempt != 1 || calls[1].ev.Attempt != 2 {
		t.Fatalf("calls: %v; want attempt 1 (timed out) then attempt 2", attempts(calls))
	}
	if !errors.Is(calls[0].err, context.DeadlineExceeded) {
		t.Errorf("first attempt's ctx ended with %v, want context.DeadlineExceeded", calls[0].err)
	}
	if d := calls[0].end.Sub(calls[0].start); d < timeout-clockSlack {
		t.Errorf("handler ctx was cancelled after %s, before its %s timeout", d, timeout)
	}
}

// testAbandonedHandler: a handler that ignores its cancelled ctx does not
// hold its event forever: the attempt is counted and the event retried.
func testAbandonedHandler(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var rec recorder
	on(t, bus, "conformance.stuck.started", "stuck.handler", rec.handler("", func(_ context.Context, e ripple.Event) error {
		if e.Attempt == 1 {
			<-release // ignores its ctx
		}
		return nil
	}), ripple.Timeout(100*time.Millisecond), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	start(t, bus)
	pub := publish(t, bus, "conformance.stuck.started", map[string]int{})
	rec.waitSucceeded(t, "the event to be retried after its handler hung", pub.ID)
	if c := rec.of(pub.ID)[0]; c.ev.Attempt != 2 {
		t.Errorf("retry of a hung handler has Attempt %d, want 2", c.ev.Attempt)
	}
}

// testPanic: a panicking handler is retried and the bus keeps working.
func testPanic(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	var rec recorder
	on(t, bus, "conformance.panic.raised", "panic.handler", rec.handler("", func(_ context.Context, e ripple.Event) error {
		if e.Attempt == 1 && bytes.Contains(e.Data, []byte("boom")) {
			panic("conformance: deliberate panic")
		}
		return nil
	}), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	start(t, bus)
	boom := publish(t, bus, "conformance.panic.raised", map[string]string{"do": "boom"})
	calm := publish(t, bus, "conformance.panic.raised", map[string]string{"do": "nothing"})
	rec.waitSucceeded(t, "the panicking event to be retried and the other handled", boom.ID, calm.ID)
	calls := rec.of(boom.ID)
	if len(calls) != 2 || calls[0].err == nil || calls[1].ev.Attempt != 2 {
		t.Errorf("panicking event: %v; want a panic on attempt 1 then success on attempt 2", attempts(calls))
	}
	after := publish(t, bus, "conformance.panic.raised", map[string]string{"do": "nothing"})
	rec.waitSucceeded(t, "an event published after the panic to be handled", after.ID)
}

// attempts summarises calls for error messages.
func attempts(calls []call) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = fmt.Sprintf("attempt %d at %s: %v", c.ev.Attempt, c.start.Format("15:04:05.000"), c.err)
	}
	return out
}

// counter tracks how many calls run at once.
type counter struct {
	mu       sync.Mutex
	cur, max int
}

func (c *counter) enter() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur++
	c.max = max(c.max, c.cur)
	return c.cur
}

func (c *counter) leave() {
	c.mu.Lock()
	c.cur--
	c.mu.Unlock()
}

func (c *counter) get() (cur, peak int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.max
}
