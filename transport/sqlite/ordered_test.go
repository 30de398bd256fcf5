package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// checkHeld asserts the invariant Ordered() leasing relies on: the oldest
// unsettled row of every key is never held.
func checkHeld(t *testing.T, d *driver) {
	t.Helper()
	var n int
	err := d.rdb.QueryRow(`SELECT count(*) FROM deliveries d WHERE d.held = 1 AND d.state = 0 AND NOT EXISTS (
		SELECT 1 FROM deliveries e INDEXED BY deliveries_key WHERE e.sub_id = d.sub_id AND e.key = d.key
			AND e.state IN (0, 1) AND e.key <> '' AND e.event_seq < d.event_seq)`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d held rows are the oldest unsettled row of their key", n)
	}
}

// readyRows counts the rows of a subscription that a lease scan walks.
func readyRows(t *testing.T, d *driver, name string) int {
	t.Helper()
	var n int
	err := d.rdb.QueryRow(`SELECT count(*) FROM deliveries INDEXED BY deliveries_ready
		WHERE sub_id = (SELECT id FROM subscriptions WHERE name = ?) AND state = 0 AND held = 0`, name).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOrderedBacklogHeld checks that the rows waiting behind a key's head
// are kept out of the lease scan however they arrive (one batch, one by
// one, through PublishTx), and that draining releases them one at a time
// in order.
func TestOrderedBacklogHeld(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Ordered: true})
	subscribe(t, d, transport.SubscriptionSpec{Name: "u", Pattern: "a.b"})
	var want []string
	mk := func(key string) *transport.Message {
		m := msg("a.b")
		m.Key = key
		if key == "k" {
			want = append(want, m.ID)
		}
		return m
	}
	var batch []*transport.Message
	for range 200 {
		batch = append(batch, mk("k"))
	}
	publish(t, d, batch...)
	for range 50 {
		publish(t, d, mk("k"))
	}
	db, err := DB(d)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.PublishTx(context.Background(), tx, []*transport.Message{mk("k"), mk("k")}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	publish(t, d, mk("other"), mk(""))
	if n := readyRows(t, d, "h"); n != 3 {
		t.Fatalf("lease scan of the ordered handler walks %d rows, want 3 (the head of k, the head of other, the unkeyed)", n)
	}
	// The unordered handler has no row yet: the events wait in the log.
	if n := readyRows(t, d, "u"); n != 0 {
		t.Fatalf("unordered handler: %d ready rows before any lease, want 0 (the events wait in the log)", n)
	}
	if st := statsOf(t, d, "u"); st.Waiting != 254 {
		t.Fatalf("unordered handler: %d waiting, want 254", st.Waiting)
	}
	checkHeld(t, d)
	var got []string
	others := 0
	for len(got)+others < len(want)+2 {
		ds := receive(t, s, 10, 5*time.Second)
		for _, x := range ds {
			if x.Key == "k" {
				got = append(got, x.ID)
			} else {
				others++
			}
		}
		settleAll(t, s, ds, transport.Complete)
		checkHeld(t, d)
	}
	if others != 2 || len(got) != len(want) {
		t.Fatalf("drained %d of key k and %d others, want %d and 2", len(got), others, len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("delivery %d of key k: %s, want %s", i, got[i], want[i])
		}
	}
	receiveNone(t, s, 200*time.Millisecond)
}

// TestOrderedHeldThroughOutcomes walks a key's head through retry, release,
// dead, requeue and replay and checks after each step which row is
// deliverable and that no key is stuck.
func TestOrderedHeldThroughOutcomes(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Ordered: true})
	mk := func() *transport.Message { m := msg("a.b"); m.Key = "k"; return m }
	m1, m2, m3 := mk(), mk(), mk()
	publish(t, d, m1, m2, m3)
	expect := func(id string) *transport.Delivery {
		t.Helper()
		checkHeld(t, d)
		ds := receive(t, s, 10, 5*time.Second)
		if len(ds) != 1 || ds[0].ID != id {
			t.Fatalf("got %v, want only %s", ids(ds), id)
		}
		return ds[0]
	}
	settle(t, s, expect(m1.ID), transport.Retry, 0, "fail")
	settle(t, s, expect(m1.ID), transport.Release, 0, "")
	settle(t, s, expect(m1.ID), transport.Dead, 0, "gave up")
	settle(t, s, expect(m2.ID), transport.Complete, 0, "")
	// Requeue makes the dead m1 the head again, ahead of the waiting m3.
	if n, err := d.Requeue(context.Background(), "h", []string{m1.ID}); err != nil || n != 1 {
		t.Fatalf("Requeue = %d, %v", n, err)
	}
	settle(t, s, expect(m1.ID), transport.Complete, 0, "")
	run := expect(m3.ID)
	// Replay while m3 runs: m1 and m2 wait for m3, then go in order.
	// m3 itself, leased at the time, is left as it is.
	if n, err := d.Replay(context.Background(), "h", time.Time{}); err != nil || n == 0 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	checkHeld(t, d)
	receiveNone(t, s, 200*time.Millisecond)
	settle(t, s, run, transport.Complete, 0, "")
	settle(t, s, expect(m1.ID), transport.Complete, 0, "")
	settle(t, s, expect(m2.ID), transport.Complete, 0, "")
	checkHeld(t, d) // m3 was running, so Replay left it alone
	receiveNone(t, s, 200*time.Millisecond)
}

// TestOrderedLeaseExpiryKeepsKey checks that a head whose lease expired
// (its worker died) is delivered again before the rows behind it.
func TestOrderedLeaseExpiryKeepsKey(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Ordered: true, Lease: 300 * time.Millisecond})
	m1, m2 := msg("a.b"), msg("a.b")
	m1.Key, m2.Key = "k", "k"
	publish(t, d, m1, m2)
	if ds := receive(t, s, 10, 5*time.Second); len(ds) != 1 || ds[0].ID != m1.ID {
		t.Fatalf("got %v, want %s", ids(ds), m1.ID)
	}
	// Not settled: the lease runs out and m1 comes back, not m2.
	ds := receive(t, s, 10, 10*time.Second)
	if len(ds) != 1 || ds[0].ID != m1.ID || ds[0].Attempt != 2 {
		t.Fatalf("after expiry got %v, want %s again", ids(ds), m1.ID)
	}
	settleAll(t, s, ds, transport.Complete)
	if ds := receive(t, s, 10, 5*time.Second); len(ds) != 1 || ds[0].ID != m2.ID {
		t.Fatalf("got %v, want %s", ids(ds), m2.ID)
	}
	checkHeld(t, d)
}

// TestOrderedTwoDrivers has receivers in two drivers on one file (what two
// processes do) compete for an ordered handler's keys, with failures
// retried: every key's events complete exactly once each, in publish order.
func TestOrderedTwoDrivers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	d1 := open(t, path, transport.Config{})
	d2 := open(t, path, transport.Config{})
	spec := transport.SubscriptionSpec{Name: "o", Pattern: "job.*", Ordered: true, Lease: time.Minute}
	subs := []transport.Subscription{subscribe(t, d1, spec), subscribe(t, d2, spec), subscribe(t, d1, spec), subscribe(t, d2, spec)}
	const perKey = 40
	keys := []string{"a", "b", "c"}
	var batch []*transport.Message
	for i := range perKey {
		for _, k := range keys {
			batch = append(batch, &transport.Message{ID: fmt.Sprintf("%s-%03d", k, i), Type: "job.x", Key: k, Time: time.Now(),
				Attrs: map[string]string{"source": "test"}})
		}
	}
	publish(t, d1, batch[:60]...)
	publish(t, d2, batch[60:]...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	done := map[string][]string{}
	total := 0
	var wg sync.WaitGroup
	for i, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for ctx.Err() == nil {
				ds, err := s.Receive(ctx, 2)
				if err != nil {
					return
				}
				for _, x := range ds {
					n++
					out := transport.Complete
					if (n+i)%5 == 0 {
						out = transport.Retry
					}
					mu.Lock()
					if out == transport.Complete {
						done[x.Key] = append(done[x.Key], x.ID)
						total++
						if total == len(batch) {
							cancel()
						}
					}
					mu.Unlock()
					if err := s.Settle(context.Background(), []transport.Settlement{{Delivery: x, Outcome: out}}); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	for _, k := range keys {
		if len(done[k]) != perKey {
			t.Fatalf("key %s: %d completions, want %d: %v", k, len(done[k]), perKey, done[k])
		}
		for i, id := range done[k] {
			if want := fmt.Sprintf("%s-%03d", k, i); id != want {
				t.Fatalf("key %s: completion %d is %s, want %s (all: %v)", k, i, id, want, done[k])
			}
		}
	}
}

// testdata/schema2.db was written by the schema-2 code: an ordered handler
// o and an unordered handler u on ord.>, six events (k-1…k-4 of key k, j-1
// of key j, n-1 without a key), k-1 completed by o. Opening it migrates it
// to the held rows of schema 3: k-3 and k-4 wait behind k-2, and o drains
// every key in order.
func TestMigrateSchema2(t *testing.T) {
	src, err := os.ReadFile("testdata/schema2.db")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "old.db")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	d := open(t, path, transport.Config{})
	var v int64
	if err := d.rdb.QueryRow(`SELECT value FROM ripple_meta WHERE key = 'schema_version'`).Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("schema version after migration = %d (%v), want %d", v, err, schemaVersion)
	}
	checkHeld(t, d)
	if n := readyRows(t, d, "o"); n != 3 {
		t.Fatalf("ordered handler after migration: %d rows in the lease scan, want 3 (k-2, j-1, n-1)", n)
	}
	st, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st {
		want := map[string]int64{"o": 5, "u": 6}[h.Handler]
		if h.Waiting != want {
			t.Fatalf("%s after migration: waiting %d, want %d", h.Handler, h.Waiting, want)
		}
	}
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "o", Pattern: "ord.>", Ordered: true})
	ds := receive(t, s, 10, 5*time.Second)
	if fmt.Sprint(ids(ds)) != "[k-2 j-1 n-1]" {
		t.Fatalf("first receive after migration: %v, want [k-2 j-1 n-1]", ids(ds))
	}
	settleAll(t, s, ds, transport.Complete)
	for _, want := range []string{"k-3", "k-4"} {
		ds := receive(t, s, 10, 5*time.Second)
		if len(ds) != 1 || ds[0].ID != want {
			t.Fatalf("got %v, want %s", ids(ds), want)
		}
		settleAll(t, s, ds, transport.Complete)
	}
	d.Close()
	// A second open finds the current version and changes nothing.
	d = open(t, path, transport.Config{})
	if err := d.rdb.QueryRow(`SELECT value FROM ripple_meta WHERE key = 'schema_version'`).Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("schema version on reopen = %d (%v)", v, err)
	}
}
