package amqp

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// redisStore returns the test Redis server's URL (RIPPLE_TEST_REDIS_URL),
// or skips (fails under RIPPLE_TEST_REQUIRE_SERVERS=1) when it is unset.
func redisStore(t *testing.T) string {
	t.Helper()
	u := os.Getenv("RIPPLE_TEST_REDIS_URL")
	if u == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_REDIS_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start redis-server (scripts/test does)")
		}
		t.Skip("no Redis: set RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:6379/0 to test a redis store")
	}
	return u
}

// TestStoreURLErrors: a store= that cannot keep shared state, or is not a
// URL, is refused at Open with an error naming the parameter, and never
// shows a password.
func TestStoreURLErrors(t *testing.T) {
	base := namespaceURL(t)
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	for _, c := range []struct{ store, want string }{
		{"memory://x", "inside this process"},
		{serverURL(t), "no atomic claims"},
		{"not-a-url", "not a transport URL"},
		{"nosuch://host/x", "no transport is registered"},
		{"redis://:hunter2@127.0.0.1:1/0", "opening the store"},
	} {
		d, err := Open(ctx, base+"&store="+url.QueryEscape(c.store), transport.Config{})
		if err == nil {
			d.Close()
			t.Errorf("store=%s: Open succeeded, want an error", c.store)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "store") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("store=%s: %v; want an error about store= saying %q, without the password", c.store, err, c.want)
		}
	}
	if _, err := Open(ctx, base+"&store_env=RIPPLE_AMQP_NO_SUCH_VAR", transport.Config{}); err == nil || !strings.Contains(err.Error(), "RIPPLE_AMQP_NO_SUCH_VAR") {
		t.Errorf("store_env naming an unset variable: %v; want an error naming it", err)
	}
	file := "sqlite://" + filepath.Join(t.TempDir(), "s.db")
	if _, err := Open(ctx, base+"&store="+url.QueryEscape(file)+"&store_env=X", transport.Config{}); err == nil || !strings.Contains(err.Error(), "both") {
		t.Errorf("store= and store_env= together: %v; want an error", err)
	}
}

// TestStoreEnv: store_env= reads the store's URL from the environment,
// and the driver then declares Dedup and implements Claimer.
func TestStoreEnv(t *testing.T) {
	t.Setenv("RIPPLE_AMQP_TEST_STORE", "sqlite://"+filepath.Join(t.TempDir(), "env.db"))
	d, err := Open(bg, namespaceURL(t)+"&store_env=RIPPLE_AMQP_TEST_STORE", transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sd, ok := d.(*StoreDriver)
	if !ok || !d.Capabilities().Dedup || !d.Capabilities().SharedRateLimit || sd.Store() != "sqlite" {
		t.Fatalf("with store_env: %T, %+v; want a StoreDriver on sqlite declaring Dedup and SharedRateLimit", d, d.Capabilities())
	}
	plain := openDriver(t, namespaceURL(t))
	if c := plain.Capabilities(); c.Dedup || c.SharedRateLimit {
		t.Errorf("without a store the driver declares %+v; want neither Dedup nor SharedRateLimit", c)
	}
	var drv transport.Driver = plain
	if _, ok := drv.(transport.Claimer); ok {
		t.Error("without a store the driver implements Claimer")
	}
}

// TestStoreDuplicate: through a store, publishing an identity again
// stores nothing and reports a duplicate carrying the message as resent
// (RabbitMQ cannot read the kept copy back); the same id under another
// source is another event.
func TestStoreDuplicate(t *testing.T) {
	raw := storeURL(t)
	bus, err := ripple.Open(bg, raw)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var mu sync.Mutex
	var got []string
	if err := bus.On("store.dup.sent", "store.dup", func(_ context.Context, e ripple.Event) error {
		mu.Lock()
		got = append(got, e.Source+"="+string(e.Data))
		mu.Unlock()
		return nil
	}, ripple.Idempotent()); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	pub := func(v, source string) ripple.Event {
		t.Helper()
		e, err := bus.Publish(bg, "store.dup.sent", v, ripple.WithID("d-1"), ripple.WithSource(source))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	if e := pub("first", "urn:a"); e.Duplicate {
		t.Error("the first publish was reported a duplicate")
	}
	if e := pub("second", "urn:a"); !e.Duplicate || e.ID != "d-1" || string(e.Data) != `"second"` {
		t.Errorf("publish again: Duplicate=%v id %s data %s; want a duplicate reported as resent", e.Duplicate, e.ID, e.Data)
	}
	if e := pub("other", "urn:b"); e.Duplicate {
		t.Error("the same id under another source was reported a duplicate")
	}
	want := []string{`urn:a="first"`, `urn:b="other"`}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		g := slices.Clone(got)
		mu.Unlock()
		slices.Sort(g)
		if len(g) >= 2 {
			// Give a wrongly stored duplicate time to arrive.
			time.Sleep(300 * time.Millisecond)
			mu.Lock()
			g = slices.Clone(got)
			mu.Unlock()
			slices.Sort(g)
			if !slices.Equal(g, want) {
				t.Fatalf("handled %v, want %v", g, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("handled %v after 30s, want %v", g, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStoreRedis: two processes on one namespace and one Redis store
// share publish deduplication, idempotency claims and the rate limit's
// window.
func TestStoreRedis(t *testing.T) {
	raw := namespaceURL(t) + "&store=" + url.QueryEscape(redisStore(t))
	open := func() *StoreDriver {
		d, err := Open(bg, raw, transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d.(*StoreDriver)
	}
	a, b := open(), open()
	if c := a.Capabilities(); !c.Dedup || !c.SharedRateLimit {
		t.Fatalf("a redis store gives %+v; want Dedup and SharedRateLimit", c)
	}
	sub, err := a.Subscribe(bg, transport.SubscriptionSpec{Name: "store.redis", Pattern: "store.redis.>", Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	id := "r-" + randHex(4)
	msg := func(v string) *transport.Message {
		return &transport.Message{ID: id, Type: "store.redis.sent", Time: time.Now(), Attrs: map[string]string{"source": "urn:t"}, Data: []byte(v)}
	}
	m1, m2 := msg("1"), msg("2")
	if err := a.Publish(bg, []*transport.Message{m1}); err != nil || m1.Duplicate != nil {
		t.Fatalf("first publish: %v, duplicate %v", err, m1.Duplicate)
	}
	if err := b.Publish(bg, []*transport.Message{m2}); err != nil || m2.Duplicate == nil {
		t.Fatalf("the same identity from another process: %v, duplicate %v; want a duplicate", err, m2.Duplicate)
	}
	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	ds, err := sub.Receive(ctx, 10)
	cancel()
	if err != nil || len(ds) != 1 || string(ds[0].Data) != "1" {
		t.Fatalf("Receive: %v, %d deliveries; want the first copy only", err, len(ds))
	}
	if err := sub.Settle(bg, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Complete}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(bg, 500*time.Millisecond)
	if more, _ := sub.Receive(ctx, 10); len(more) != 0 {
		t.Errorf("the duplicate was stored too: got %s", more[0].Data)
	}
	cancel()

	// Claims: one process holds, the other sees Busy, then Done.
	if r, err := a.Claim(bg, "store.redis", id, time.Minute); err != nil || r != transport.Claimed {
		t.Fatalf("Claim: %v %v", r, err)
	}
	if r, err := b.Claim(bg, "store.redis", id, time.Minute); err != nil || r != transport.Busy {
		t.Errorf("Claim from the other process while held: %v %v; want Busy", r, err)
	}
	if err := a.Finish(bg, "store.redis", id, true); err != nil {
		t.Fatal(err)
	}
	if r, err := b.Claim(bg, "store.redis", id, time.Minute); err != nil || r != transport.Done {
		t.Errorf("Claim from the other process once done: %v %v; want Done", r, err)
	}
	// The rate limit's window is shared: two slots of 2 per minute,
	// one from each process, then the third waits.
	for i, d := range []*StoreDriver{a, b} {
		if w, err := d.Reserve(bg, "store.redis", 2, time.Minute); err != nil || w != 0 {
			t.Fatalf("Reserve %d: wait %s, %v; want no wait", i, w, err)
		}
	}
	if w, err := a.Reserve(bg, "store.redis", 2, time.Minute); err != nil || w <= 0 {
		t.Errorf("a third Reserve of 2 per minute across processes: wait %s, %v; want a wait", w, err)
	}
}
