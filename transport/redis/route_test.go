package redis

import (
	"context"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// genMsg is a message as the core publishes one without WithID: it takes
// the direct path.
func genMsg(typ string) *transport.Message {
	m := msg(typ)
	m.IDGenerated = true
	return m
}

// resubscribe closes s and subscribes its handler again under pattern, as
// a new version of the program would.
func resubscribe(t testing.TB, d *Driver, s transport.Subscription, name, pattern string) transport.Subscription {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return subscribe(t, d, name, pattern, time.Minute)
}

// TestDirectPublishSeesNewSubscriptions checks that a publisher whose
// cached registry is out of date still reaches a subscription another
// process registered, and that an event going to several streams reaches
// each once.
func TestDirectPublishSeesNewSubscriptions(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	pub := openURL(t, u, transport.Config{})
	other := openURL(t, u, transport.Config{})
	a := subscribe(t, other, "a", "x.y", time.Minute)
	publish(t, pub, genMsg("x.y")) // caches a registry with "a" only
	receive(t, a, 1, 2*time.Second)

	b := subscribe(t, other, "b", "x.*", time.Minute)
	m := genMsg("x.y")
	publish(t, pub, m)
	for _, s := range []transport.Subscription{a, b} {
		if got := receive(t, s, 1, 2*time.Second)[0]; got.ID != m.ID {
			t.Fatalf("received %s, want %s", got.ID, m.ID)
		}
		receiveNone(t, s, 200*time.Millisecond)
	}
	if v := pub.routes.version; v != rawClient(t, pub).Get(context.Background(), pub.subsVersionKey()).Val() {
		t.Errorf("publisher's registry is at version %q after the publish, Redis at another", v)
	}
}

// TestDirectPublishAfterUnsubscribe checks that a publisher with a cached
// registry does not recreate the stream of a handler unsubscribed
// meanwhile.
func TestDirectPublishAfterUnsubscribe(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	pub := openURL(t, u, transport.Config{})
	admin := openURL(t, u, transport.Config{})
	s := subscribe(t, admin, "gone", "x.y", time.Minute)
	publish(t, pub, genMsg("x.y"))
	receive(t, s, 1, 2*time.Second)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := admin.Unsubscribe(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	publish(t, pub, genMsg("x.y"))
	if n := rawClient(t, pub).Exists(context.Background(), pub.streamKey("gone")).Val(); n != 0 {
		t.Fatalf("publishing after Unsubscribe recreated the handler's stream")
	}
	if pub.routes.match("x.y") != nil {
		t.Fatalf("publisher still routes x.y to %v after Unsubscribe", pub.routes.match("x.y"))
	}
}

// TestDirectPublishRecreatesDeletedStream checks that an event is not
// dropped when a registered subscription's stream was deleted by hand.
func TestDirectPublishRecreatesDeletedStream(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "x.y", time.Minute)
	publish(t, d, genMsg("x.y"))
	receive(t, s, 1, 2*time.Second)
	if err := rawClient(t, d).Del(context.Background(), d.streamKey("h")).Err(); err != nil {
		t.Fatal(err)
	}
	m := genMsg("x.y")
	publish(t, d, m)
	if got := receive(t, s, 1, 3*time.Second)[0]; got.ID != m.ID {
		t.Fatalf("received %s, want %s", got.ID, m.ID)
	}
}

// TestCompletionsFlushedOnClose checks that completions acknowledged in
// the background are sent before Close returns, so another process sees
// them done rather than pending.
func TestCompletionsFlushedOnClose(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d, err := Open(context.Background(), u, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "h", Pattern: "x.y", Lease: time.Minute, MaxAttempts: 5})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for range n {
		publish(t, d, genMsg("x.y"))
	}
	ds := receive(t, s, n, 3*time.Second)
	settle(t, s, transport.Complete, 0, ds...)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	other := openURL(t, u, transport.Config{})
	if st := stats(t, other, "h"); st.Completed != n || st.Active != 0 || st.Waiting != 0 {
		t.Fatalf("after Close: %+v; want %d completed, none active or waiting", st, n)
	}
}

// TestBothProtocols checks a publish and a blocking receive over RESP2 and
// RESP3, whose XREADGROUP replies differ in shape (an array of streams, a
// map of them).
func TestBothProtocols(t *testing.T) {
	t.Parallel()
	for _, proto := range []string{"2", "3"} {
		t.Run("protocol="+proto, func(t *testing.T) {
			d := openURL(t, withParams(prefixURL(t), "protocol", proto), transport.Config{})
			s := subscribe(t, d, "h", "x.y", time.Minute)
			receiveNone(t, s, 300*time.Millisecond) // the next receive blocks in XREADGROUP
			m := genMsg("x.y")
			m.Attrs["correlationid"] = "c-1"
			go func() {
				time.Sleep(50 * time.Millisecond)
				if err := d.Publish(context.Background(), []*transport.Message{m}); err != nil {
					t.Errorf("Publish: %v", err)
				}
			}()
			got := receive(t, s, 1, 2*time.Second)[0]
			if got.ID != m.ID || got.Type != "x.y" || string(got.Data) != string(m.Data) || got.Attrs["correlationid"] != "c-1" || got.Attempt != 1 {
				t.Fatalf("over RESP%s received %+v, want %+v", proto, got.Message, *m)
			}
		})
	}
}

// TestDirectPublishAfterPatternNarrowed checks that a publisher whose
// cached registry still has a handler's old, wider pattern does not send
// it an event the new pattern excludes, while an event published before
// the change stays with the handler.
func TestDirectPublishAfterPatternNarrowed(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	pub := openURL(t, u, transport.Config{})
	admin := openURL(t, u, transport.Config{})
	s := subscribe(t, admin, "h", "a.>", time.Minute)
	before := genMsg("a.before")
	publish(t, pub, before) // caches a registry with h on a.>
	s = resubscribe(t, admin, s, "h", "b.>")
	after := genMsg("b.after")
	publish(t, pub, genMsg("a.after"), after)
	for _, want := range []string{before.ID, after.ID} {
		if got := receive(t, s, 1, 2*time.Second)[0]; got.ID != want {
			t.Fatalf("received %s (%s), want %s", got.ID, got.Type, want)
		}
	}
	receiveNone(t, s, 200*time.Millisecond)
}

// TestDirectPublishAfterRegistryLost checks that a registry rebuilt after
// Redis lost its data is never taken for the one a publisher cached, even
// after as many changes as that one had seen.
func TestDirectPublishAfterRegistryLost(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	pub := openURL(t, u, transport.Config{})
	admin := openURL(t, u, transport.Config{})
	subscribe(t, admin, "a1", "x.a", time.Minute)
	subscribe(t, admin, "a2", "x.a", time.Minute)
	publish(t, pub, genMsg("x.a")) // caches a registry with a1 and a2
	deletePrefix(serverURL(t), admin.prefix)

	subscribe(t, admin, "a1", "x.a", time.Minute)
	b := subscribe(t, admin, "b", "x.b", time.Minute)
	m := genMsg("x.b")
	publish(t, pub, m)
	if got := receive(t, b, 1, 2*time.Second)[0]; got.ID != m.ID {
		t.Fatalf("received %s, want %s", got.ID, m.ID)
	}
}

// TestPatternNarrowedKeepsRetriesAndDelayed checks that events routed
// before a handler's pattern was narrowed still reach it when Ripple
// appends them again later: a retry, and a delayed event coming due.
func TestPatternNarrowedKeepsRetriesAndDelayed(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.>", time.Minute)
	retried := genMsg("a.retried")
	publish(t, d, retried)
	settle(t, s, transport.Retry, 300*time.Millisecond, receive(t, s, 1, 2*time.Second)...)
	delayed := msg("a.delayed")
	delayed.Delay = 300 * time.Millisecond
	publish(t, d, delayed)
	s = resubscribe(t, d, s, "h", "b.>")
	got := map[string]bool{}
	for _, x := range receive(t, s, 2, 3*time.Second) {
		got[x.ID] = true
	}
	if !got[retried.ID] || !got[delayed.ID] {
		t.Fatalf("after the pattern was narrowed, received %v; want the retry %s and the delayed %s", got, retried.ID, delayed.ID)
	}
}

// TestPatternNarrowedKeepsRequeuedDeadLetters checks that a dead letter
// requeued after its handler's pattern was narrowed is delivered: it was
// routed when it was published.
func TestPatternNarrowedKeepsRequeuedDeadLetters(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "order.>", time.Minute)
	m := genMsg("order.created")
	publish(t, d, m)
	settle(t, s, transport.Dead, 0, receive(t, s, 1, 2*time.Second)...)
	s = resubscribe(t, d, s, "h", "order.paid")
	if n, err := d.Requeue(context.Background(), "h", nil); err != nil || n != 1 {
		t.Fatalf("Requeue = %d, %v; want 1", n, err)
	}
	if got := receive(t, s, 1, 2*time.Second)[0]; got.ID != m.ID {
		t.Fatalf("received %s, want the requeued %s", got.ID, m.ID)
	}
}

// TestRegistrationWithoutStartFiltersNothing checks that a registration
// with no recorded start, as left by a Ripple that did not record one,
// filters nothing: a backlog under an older pattern is still delivered.
func TestRegistrationWithoutStartFiltersNothing(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	subscribe(t, d, "h", "a.>", time.Minute)
	m := genMsg("a.x")
	publish(t, d, m)
	c, ctx := rawClient(t, d), context.Background()
	// Narrowed without a recorded start.
	if err := c.HSet(ctx, d.subsKey(), "h", "b.>").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.HDel(ctx, d.subsFromKey(), "h").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, d.subsVersionKey(), newRegistryVersion(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	s := subscribe(t, d, "h", "b.>", time.Minute)
	if got := receive(t, s, 1, 2*time.Second)[0]; got.ID != m.ID {
		t.Fatalf("received %s, want the backlog's %s", got.ID, m.ID)
	}
}
