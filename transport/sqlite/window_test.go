package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// count returns the result of a count query on the driver's file.
func count(t *testing.T, d *driver, q string, args ...any) int {
	t.Helper()
	var n int
	if err := d.rdb.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// receiveN receives until it has n deliveries.
func receiveN(t *testing.T, s transport.Subscription, n int) []*transport.Delivery {
	t.Helper()
	var out []*transport.Delivery
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n {
		if time.Now().After(deadline) {
			t.Fatalf("received %d deliveries, want %d", len(out), n)
		}
		out = append(out, receive(t, s, n-len(out), 10*time.Second)...)
	}
	return out
}

func completeAll(t *testing.T, s transport.Subscription, ds []*transport.Delivery) {
	t.Helper()
	ss := make([]transport.Settlement, len(ds))
	for i, d := range ds {
		ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Complete}
	}
	if err := s.Settle(context.Background(), ss); err != nil {
		t.Fatal(err)
	}
}

// A handler's progress through the log is written per lease, not per
// event: five handlers taking 200 events each write no deliveries row and
// a few windows rows, and Stats counts the completions from the windows.
func TestWindowOneRowPerBatch(t *testing.T) {
	d, _ := newDB(t)
	var subs []transport.Subscription
	for i := range 5 {
		subs = append(subs, subscribe(t, d, transport.SubscriptionSpec{Name: fmt.Sprintf("h%d", i), Pattern: "w.>"}))
	}
	var ms []*transport.Message
	for range 200 {
		ms = append(ms, msg("w.e"))
	}
	publish(t, d, ms...)
	for i, s := range subs {
		var ds []*transport.Delivery
		leases := 0
		for len(ds) < 200 {
			ds = append(ds, receive(t, s, 64, 10*time.Second)...)
			leases++
		}
		if got := ids(ds); !slices.Equal(got, ids(toDeliveries(ms))) {
			t.Fatalf("h%d received %v, want the 200 events in order", i, got)
		}
		if st := statsOf(t, d, fmt.Sprintf("h%d", i)); st.Active != 200 || st.Waiting != 0 {
			t.Fatalf("h%d while leased: %+v, want 200 active", i, st)
		}
		completeAll(t, s, ds)
		if n := count(t, d, `SELECT count(*) FROM windows WHERE sub_id = (SELECT id FROM subscriptions WHERE name = ?)`, fmt.Sprintf("h%d", i)); n > leases {
			t.Errorf("h%d wrote %d windows in %d leases, want at most one a lease", i, n, leases)
		}
		if st := statsOf(t, d, fmt.Sprintf("h%d", i)); st.Completed != 200 || st.Active != 0 || st.Waiting != 0 {
			t.Fatalf("h%d after completing: %+v, want 200 completed", i, st)
		}
	}
	if n := count(t, d, `SELECT count(*) FROM deliveries`); n != 0 {
		t.Fatalf("%d deliveries rows after 1,000 successful deliveries, want none", n)
	}
}

func toDeliveries(ms []*transport.Message) []*transport.Delivery {
	out := make([]*transport.Delivery, len(ms))
	for i, m := range ms {
		out[i] = &transport.Delivery{Message: *m}
	}
	return out
}

// A window whose lease runs out gives back only its open events, with
// their attempt counted; a settlement from the old lease changes nothing.
func TestWindowLeaseExpiry(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>", Lease: 150 * time.Millisecond})
	var ms []*transport.Message
	for range 5 {
		ms = append(ms, msg("w.e"))
	}
	publish(t, d, ms...)
	ds := receiveN(t, s, 5)
	completeAll(t, s, ds[:2])
	again := receiveN(t, s, 3) // waits for the lease to run out
	if got, want := ids(again), ids(ds[2:]); !slices.Equal(got, want) {
		t.Fatalf("after the lease ran out: %v, want the open ones %v", got, want)
	}
	for _, x := range again {
		if x.Attempt != 2 {
			t.Errorf("%s came back as attempt %d, want 2", x.ID, x.Attempt)
		}
		if !x.FirstDelivered.Equal(ds[0].FirstDelivered) {
			t.Errorf("%s first delivered %v, want the window's %v", x.ID, x.FirstDelivered, ds[0].FirstDelivered)
		}
	}
	// The old lease's settlements are refused silently.
	completeAll(t, s, ds[2:])
	if st := statsOf(t, d, "h"); st.Completed != 2 || st.Active != 3 {
		t.Fatalf("after a stale settlement: %+v, want 2 completed and 3 active", st)
	}
	completeAll(t, s, again)
	if st := statsOf(t, d, "h"); st.Completed != 5 || st.Active != 0 || st.Waiting != 0 {
		t.Fatalf("after completing: %+v, want 5 completed", st)
	}
	receiveNone(t, s, 300*time.Millisecond)
}

// Extending a window delivery keeps its window leased.
func TestWindowExtend(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>", Lease: 200 * time.Millisecond})
	publish(t, d, msg("w.e"), msg("w.e"))
	ds := receiveN(t, s, 2)
	if err := s.Extend(context.Background(), ds, time.Hour); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, s, 500*time.Millisecond)
	completeAll(t, s, ds)
	if st := statsOf(t, d, "h"); st.Completed != 2 {
		t.Fatalf("%+v, want both completed under the extended lease", st)
	}
}

// Retry, release and dead take an event out of its window into a row of
// its own; the window's other events are unaffected.
func TestWindowFailuresBecomeRows(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>"})
	publish(t, d, msg("w.e"), msg("w.e"), msg("w.e"), msg("w.e"))
	ds := receiveN(t, s, 4)
	ctx := context.Background()
	if err := s.Settle(ctx, []transport.Settlement{
		{Delivery: ds[0], Outcome: transport.Retry, Error: "try again"},
		{Delivery: ds[1], Outcome: transport.Dead, Error: "boom"},
		{Delivery: ds[2], Outcome: transport.Release},
		{Delivery: ds[3], Outcome: transport.Complete},
	}); err != nil {
		t.Fatal(err)
	}
	if st := statsOf(t, d, "h"); st.Completed != 1 || st.Dead != 1 || st.Failed != 2 || st.Waiting != 2 || st.Active != 0 {
		t.Fatalf("%+v, want 1 completed, 1 dead, 2 failed, 2 waiting", st)
	}
	again := receiveN(t, s, 2)
	byID := map[string]*transport.Delivery{}
	for _, x := range again {
		byID[x.ID] = x
	}
	if x := byID[ds[0].ID]; x == nil || x.Attempt != 2 || !x.FirstDelivered.Equal(ds[0].FirstDelivered) {
		t.Fatalf("retried %s: %+v, want attempt 2 with the first delivery kept", ds[0].ID, x)
	}
	if x := byID[ds[2].ID]; x == nil || x.Attempt != 1 {
		t.Fatalf("released %s: %+v, want attempt 1 again", ds[2].ID, x)
	}
	dead, err := d.DeadLetters(ctx, "h", 0)
	if err != nil || len(dead) != 1 || dead[0].ID != ds[1].ID || dead[0].Error != "boom" || dead[0].Attempts != 1 {
		t.Fatalf("dead letters %+v %v, want %s with boom after 1 attempt", dead, err, ds[1].ID)
	}
	completeAll(t, s, again)
	if st := statsOf(t, d, "h"); st.Completed != 3 || st.Dead != 1 || st.Waiting != 0 || st.Active != 0 {
		t.Fatalf("%+v, want 3 completed and 1 dead", st)
	}
}

// A subscription starting from history reads the log from its new head:
// only the past delayed and prioritised events get rows.
func TestStartFromHistoryMovesHead(t *testing.T) {
	d, _ := newDB(t)
	early := msg("w.e")
	publish(t, d, early)
	time.Sleep(5 * time.Millisecond)
	from := time.Now()
	time.Sleep(5 * time.Millisecond)
	plain, other := msg("w.e"), msg("x.e")
	urgent := msg("w.e")
	urgent.Priority = 5
	later := msg("w.e")
	later.Delay = 300 * time.Millisecond
	publish(t, d, plain, other, urgent, later)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>", From: from})
	if n := count(t, d, `SELECT count(*) FROM deliveries`); n != 2 {
		t.Fatalf("%d rows written for the new subscription, want 2 (the prioritised and the delayed event)", n)
	}
	if st := statsOf(t, d, "h"); st.Waiting != 2 || st.Delayed != 1 {
		t.Fatalf("%+v, want 2 waiting and 1 delayed", st)
	}
	ds := receive(t, s, 10, 5*time.Second)
	if got, want := ids(ds), []string{urgent.ID, plain.ID}; !slices.Equal(got, want) {
		t.Fatalf("received %v, want %v (priority first, nothing before From)", got, want)
	}
	completeAll(t, s, ds)
	ds = receive(t, s, 10, 5*time.Second)
	if got := ids(ds); !slices.Equal(got, []string{later.ID}) {
		t.Fatalf("then %v, want the delayed %s", got, later.ID)
	}
	completeAll(t, s, ds)
	receiveNone(t, s, 100*time.Millisecond)

	// From before everything: the whole log.
	all := subscribe(t, d, transport.SubscriptionSpec{Name: "all", Pattern: "w.>", From: transport.Beginning})
	ds = receiveN(t, all, 4)
	if got := ids(ds); !slices.Contains(got, early.ID) || slices.Contains(got, other.ID) {
		t.Fatalf("from the beginning: %v, want every w event", got)
	}
}

// Replay leaves the events leased in an open window to their lease and
// makes the completed ones deliverable again.
func TestReplaySkipsLeasedWindow(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>"})
	publish(t, d, msg("w.e"), msg("w.e"), msg("w.e"))
	ds := receiveN(t, s, 3)
	completeAll(t, s, ds[:1])
	n, err := d.Replay(context.Background(), "h", time.Time{})
	if err != nil || n != 1 {
		t.Fatalf("Replay: %d %v, want 1 (the two leased ones are delivered anyway)", n, err)
	}
	again := receive(t, s, 10, 5*time.Second)
	if got := ids(again); !slices.Equal(got, []string{ds[0].ID}) {
		t.Fatalf("after replay: %v, want %s again", got, ds[0].ID)
	}
	completeAll(t, s, append(again, ds[1:]...))
	if st := statsOf(t, d, "h"); st.Completed != 4 || st.Active != 0 {
		t.Fatalf("%+v, want 4 completions", st)
	}
}

// Completed history in windows is trimmed to KeepCompleted's count, with
// the completed rows taken off the budget; an open window keeps its
// events from the pruner.
func TestWindowRetention(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ret.db")
	d := open(t, path, transport.Config{Retention: transport.Retention{CompletedCount: 5, DedupWindow: -1}})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>"})
	for range 3 {
		publish(t, d, msg("w.e"), msg("w.e"), msg("w.e"), msg("w.e"))
		completeAll(t, s, receiveN(t, s, 4))
	}
	// One event completed after a retry: a completed row.
	publish(t, d, msg("w.e"))
	ds := receiveN(t, s, 1)
	settle(t, s, ds[0], transport.Retry, 0, "again")
	completeAll(t, s, receiveN(t, s, 1))
	// An open window.
	publish(t, d, msg("w.e"), msg("w.e"))
	open := receiveN(t, s, 2)
	d.pruneNow(t)
	if st := statsOf(t, d, "h"); st.Completed != 5 || st.Active != 2 {
		t.Fatalf("after pruning: %+v, want 5 completed (1 row, 4 in windows) and 2 active", st)
	}
	if n := count(t, d, `SELECT count(*) FROM events WHERE seq >= ?`, open[0].Token.(token).seq); n != 2 {
		t.Fatalf("%d events of the open window kept, want 2", n)
	}
	completeAll(t, s, open)
	d.pruneNow(t)
	if n := count(t, d, `SELECT count(*) FROM events`); n != 2 {
		t.Fatalf("%d events kept once every window closed, want 2: the newest and the one of the completed row", n)
	}
}

// Salvage gives the open events of a lease window back as ready rows
// (their receivers are gone) and keeps the window's completed count.
func TestSalvageOpenWindow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "src.db")
	d := open(t, path, transport.Config{})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>", Lease: time.Hour})
	publish(t, d, msg("w.e"), msg("w.e"), msg("w.e"))
	ds := receiveN(t, s, 3)
	completeAll(t, s, ds[:1])
	s.Close()
	d.Close()
	out := filepath.Join(t.TempDir(), "salvaged.db")
	rep, err := Salvage(context.Background(), path, out)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Events != 3 || rep.Deliveries != 2 {
		t.Fatalf("salvage: %+v, want 3 events and 2 deliveries (the open ones)", rep)
	}
	d = open(t, out, transport.Config{})
	if st := statsOf(t, d, "h"); st.Completed != 1 || st.Waiting != 2 || st.Active != 0 {
		t.Fatalf("salvaged stats %+v, want 1 completed and 2 waiting", st)
	}
	s = subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>", Lease: time.Hour})
	again := receiveN(t, s, 2)
	if got, want := ids(again), ids(ds[1:]); !slices.Equal(got, want) {
		t.Fatalf("after salvage: %v, want the open ones %v", got, want)
	}
	for _, x := range again {
		if x.Attempt != 2 {
			t.Errorf("%s: attempt %d, want 2", x.ID, x.Attempt)
		}
	}
}

// The recent-events cache holds at most eventCacheBytes of payload, and
// no single event larger than a quarter of that.
func TestEventCacheBytesBound(t *testing.T) {
	var c eventCache
	big := make([]byte, eventCacheBytes/8)
	for i := range int64(100) {
		c.put(cachedEvent{seq: i + 1, msg: &transport.Message{ID: fmt.Sprint(i), Data: big}})
		if c.bytes > eventCacheBytes {
			t.Fatalf("after %d puts the cache holds %d bytes, over its bound %d", i+1, c.bytes, eventCacheBytes)
		}
	}
	if c.get(100) == nil || c.get(1) != nil {
		t.Fatal("the cache should keep the newest events and evict the oldest")
	}
	c.put(cachedEvent{seq: 101, msg: &transport.Message{ID: "huge", Type: "t", Data: make([]byte, eventCacheBytes/2)}, typ: "t"})
	if typ, _, ok := c.peek(101); c.get(101) != nil || !ok || typ != "t" {
		t.Fatal("an event over a quarter of the bound was cached whole, or its type was not kept")
	}
	small := 0
	for i := range int64(eventCacheSize) {
		c.put(cachedEvent{seq: 1000 + i, msg: &transport.Message{ID: "s", Data: []byte("x")}})
		small++
	}
	if len(c.m) != eventCacheSize || c.bytes != eventCacheSize {
		t.Fatalf("after %d small events: %d cached, %d bytes; want %d and %d", small, len(c.m), c.bytes, eventCacheSize, eventCacheSize)
	}
}

// A row written by another process (here a connection without the
// driver) is seen by a subscription this process had found without rows:
// its next lease does not trust that memory once the file changed.
func TestQuietSeesForeignRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "two.db")
	d := open(t, path, transport.Config{})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>"})
	m := msg("w.e")
	publish(t, d, m)
	ds := receive(t, s, 1, 5*time.Second)
	completeAll(t, s, ds)
	receiveNone(t, s, 50*time.Millisecond) // h is known without rows
	raw := rawDB(t, path)
	defer raw.Close()
	if _, err := raw.Exec(`INSERT INTO deliveries (sub_id, event_seq, state, run_at, priority, key, attempts, gen)
		SELECT id, ?, 0, 0, 0, '', 0, 1 FROM subscriptions WHERE name = 'h'`, ds[0].Token.(token).seq); err != nil {
		t.Fatal(err)
	}
	again := receive(t, s, 1, 5*time.Second)
	if len(again) != 1 || again[0].ID != m.ID {
		t.Fatalf("received %v, want %s again", ids(again), m.ID)
	}
}

// The pruner deletes the events no one needs a batch of pruneEventsBatch
// at a time, so a few passes catch up with thousands of handled events,
// and it never deletes one an open window or a row still needs.
func TestPruneEventsInBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prune.db")
	d := open(t, path, transport.Config{Retention: transport.Retention{DedupWindow: -1, DeadCount: 1000}})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>"})
	const n = 5 * pruneEventsBatch
	for i := 0; i < n; i += 500 {
		var ms []*transport.Message
		for range min(500, n-i) {
			ms = append(ms, msg("w.e"))
		}
		publish(t, d, ms...)
	}
	ds := receiveN(t, s, n)
	settle(t, s, ds[0], transport.Dead, 0, "kept as a dead letter")
	completeAll(t, s, ds[1:n-10])
	open := ds[n-10:] // an open window at the end of the log
	for range 6 {
		d.pruneNow(t)
	}
	// The open window keeps the log from its first event on.
	lo := count(t, d, `SELECT min(lo) FROM windows WHERE open_n > 0`)
	if lo > int(open[0].Token.(token).seq) || lo < n-windowMax {
		t.Fatalf("open window from %d; the open events start at %d", lo, open[0].Token.(token).seq)
	}
	if got, want := count(t, d, `SELECT count(*) FROM events`), 1+n-lo+1; got != want {
		t.Fatalf("%d events left after six passes, want %d (the dead letter's and the open window's)", got, want)
	}
	completeAll(t, s, open)
	d.pruneNow(t)
	d.pruneNow(t)
	if got := count(t, d, `SELECT count(*) FROM events`); got != 2 {
		t.Fatalf("%d events left, want 2 (the dead letter's and the newest)", got)
	}
	if dead, err := d.DeadLetters(context.Background(), "h", 0); err != nil || len(dead) != 1 || dead[0].ID != ds[0].ID {
		t.Fatalf("dead letters %v %v, want %s", dead, err, ds[0].ID)
	}
}
