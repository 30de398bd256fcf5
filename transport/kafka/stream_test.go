package kafka

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/stream"
	"github.com/ripplehq/ripple/transport"
	_ "github.com/ripplehq/ripple/transport/redis" // side store of TestStoreRedis
)

// TestStreamNeedsStore: without a side store the kafka transport has no
// publish deduplication, so a stream refuses to register, naming store=.
func TestStreamNeedsStore(t *testing.T) {
	bus, err := ripple.Open(bg, newURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	s := stream.New(bus, "signups.per.plan", "user.signup.completed", stream.Tumbling(time.Minute), stream.Emit("signup.plan.counted"))
	err = s.Count()
	if !errors.Is(err, ripple.ErrNotSupported) || !strings.Contains(err.Error(), "store=") || !strings.Contains(err.Error(), "kafka") {
		t.Fatalf("Count on kafka without store=: %v; want ErrNotSupported naming store=", err)
	}
	if hs := bus.Handlers(); len(hs) != 0 {
		t.Errorf("a refused stream registered handlers %v", hs)
	}
}

// TestStreamWithStore: with a side store, a stream on kafka publishes
// each window result once; a second process computing the same windows
// again from the retained log (a re-run after a crash) stores nothing
// new: every result is reported a duplicate, with the data kept.
func TestStreamWithStore(t *testing.T) {
	u := newURL(t, "store="+url.QueryEscape("sqlite://"+filepath.Join(t.TempDir(), "store.db")))
	const events = 60
	base := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	// Results: one per plan per minute; events spread over 3 minutes
	// and 2 plans.
	type signup struct {
		Plan string `json:"plan"`
	}
	var rmu sync.Mutex
	results := map[string]int{} // result id -> deliveries
	resultData := map[string]string{}
	run := func(name string, publish bool) *stream.Stream {
		bus, err := ripple.Open(bg, u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bus.Close() })
		s := stream.New(bus, "signups-per-plan", "user.signup.completed",
			stream.Tumbling(time.Minute),
			stream.KeyByData(func(s signup) string { return s.Plan }),
			stream.Emit("signup.plan.counted"),
			// Longer than the input's span: keyless events come out of
			// the log's partitions in any order, and no window may
			// close before Advance.
			stream.AllowedLateness(10*time.Minute),
			stream.HandlerName(name),
			stream.HandlerOptions(ripple.FromBeginning()))
		if err := s.Count(); err != nil {
			t.Fatal(err)
		}
		if publish {
			if err := bus.On("signup.plan.counted", "results.seen", func(_ context.Context, e ripple.Event) error {
				rmu.Lock()
				defer rmu.Unlock()
				results[e.ID]++
				resultData[e.ID] = string(e.Data)
				return nil
			}, ripple.FromBeginning()); err != nil {
				t.Fatal(err)
			}
		}
		if err := bus.Start(bg); err != nil {
			t.Fatal(err)
		}
		if publish {
			for i := range events {
				plan := []string{"free", "pro"}[i%2]
				at := base.Add(time.Duration(i) * 3 * time.Second)
				if _, err := bus.Publish(bg, "user.signup.completed", signup{Plan: plan}, ripple.WithID(fmt.Sprintf("signup-%d", i)), ripple.WithEventTime(at)); err != nil {
					t.Fatal(err)
				}
			}
		}
		waitFor(t, "the stream to fold every signup", 60*time.Second, func() bool { return s.Stats().Events == events })
		if err := s.Advance(bg, base.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := run("signups-per-plan", true)
	if st := first.Stats(); st.Emitted != 6 || st.Republished != 0 || st.Unpublished != 0 {
		t.Fatalf("first run: stats %+v; want 6 results emitted (2 plans x 3 minutes)", st)
	}
	waitFor(t, "the 6 results to be delivered", 60*time.Second, func() bool {
		rmu.Lock()
		defer rmu.Unlock()
		return len(results) == 6
	})
	// A second process, as after a crash: the same windows computed again
	// from the beginning of the log, under a new handler name.
	again := run("signups-per-plan-rerun", false)
	if st := again.Stats(); st.Emitted != 0 || st.Republished != 6 || st.Conflicts != 0 {
		t.Errorf("re-run: stats %+v; want the 6 results republished (found stored), none emitted, no conflicts", st)
	}
	// Markers of the result type under each plan's key, published after
	// the re-run: a result the re-run had stored again would be in the
	// same partition before them, so handled before them.
	pub, err := ripple.Open(bg, u)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for _, plan := range []string{"free", "pro"} {
		if _, err := pub.Publish(bg, "signup.plan.counted", map[string]string{"marker": plan}, ripple.WithKey(plan), ripple.WithID("marker-"+plan)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the markers to be delivered", 60*time.Second, func() bool {
		rmu.Lock()
		defer rmu.Unlock()
		return results["marker-free"] == 1 && results["marker-pro"] == 1
	})
	delete(results, "marker-free")
	delete(results, "marker-pro")
	if len(results) != 6 {
		t.Errorf("%d distinct results delivered, want 6", len(results))
	}
	rmu.Lock()
	defer rmu.Unlock()
	for id, c := range results {
		if c != 1 {
			t.Errorf("result %s delivered %d times, want once (data %s)", id, c, resultData[id])
		}
		if !strings.Contains(resultData[id], `"value":10`) {
			t.Errorf("result %s has data %s; want a count of 10", id, resultData[id])
		}
	}
}

// TestStoreRedis: the side store on Redis (RIPPLE_TEST_REDIS_URL, as
// scripts/test sets it): publish deduplication, Idempotent() claims and a
// shared rate limit through it.
func TestStoreRedis(t *testing.T) {
	base := os.Getenv("RIPPLE_TEST_REDIS_URL")
	if base == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_REDIS_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start redis-server (scripts/test does) and export RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:PORT/0")
		}
		t.Skip("no Redis server: set RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:6379/0 to run the kafka side-store test on Redis")
	}
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	store := base + sep + "prefix=" + url.QueryEscape(fmt.Sprintf("kafka-store-test-%d", time.Now().UnixNano()))
	u := newURL(t, "store_env=RIPPLE_TEST_KAFKA_REDIS_STORE")
	t.Setenv("RIPPLE_TEST_KAFKA_REDIS_STORE", store)
	bus, err := ripple.Open(bg, u)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var d transport.Driver
	if !bus.As(&d) {
		t.Fatal("no driver")
	}
	if c := d.Capabilities(); !c.Dedup || !c.SharedRateLimit {
		t.Errorf("kafka with a Redis store declares %+v; want Dedup and SharedRateLimit", c)
	}
	var mu sync.Mutex
	runs := map[string]int{}
	if err := bus.On("order.placed", "orders.idem", func(_ context.Context, e ripple.Event) error {
		mu.Lock()
		defer mu.Unlock()
		runs[e.ID]++
		return nil
	}, ripple.Idempotent(), ripple.RateLimit(100, time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	first, err := bus.Publish(bg, "order.placed", map[string]int{"v": 1}, ripple.WithID("o-1"))
	if err != nil || first.Duplicate {
		t.Fatalf("first publish: %+v, %v", first, err)
	}
	again, err := bus.Publish(bg, "order.placed", map[string]int{"v": 2}, ripple.WithID("o-1"))
	if err != nil || !again.Duplicate || string(again.Data) != `{"v":1}` {
		t.Fatalf("second publish of o-1: duplicate=%v data %s err %v; want the kept copy {\"v\":1}", again.Duplicate, again.Data, err)
	}
	if _, err := bus.Publish(bg, "order.placed", map[string]int{"v": 3}, ripple.WithID("o-2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both orders to be handled", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return runs["o-1"] == 1 && runs["o-2"] == 1
	})
	if err := bus.WaitIdle(bg); err != nil {
		t.Fatal(err)
	}
	// A replay re-delivers both; the claims in Redis keep the handler from
	// running them again.
	if n, err := bus.Replay(bg, "orders.idem", time.Now().Add(-time.Hour)); err != nil || n != 2 {
		t.Fatalf("Replay = %d, %v; want 2", n, err)
	}
	if err := bus.WaitIdle(bg); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if runs["o-1"] != 1 || runs["o-2"] != 1 || len(runs) != 2 {
		t.Errorf("handler runs %v; want each order once (claims in the Redis store)", runs)
	}
}
