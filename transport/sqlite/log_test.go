package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// The tests of what the log design makes delicate: a subscription's head
// moves past events that are leased, not settled, so a lease must never
// be mistaken for a settlement; retention trims the log below the slowest
// head while a retry far ahead keeps its own event; one handler's backlog
// never holds back another's; receivers in two processes share one head.

// An event leased at the head while every later one completes is not
// lost when its receiver goes away: it comes back after its lease, and the
// completed ones do not.
func TestLogHeadNeverPassesUnsettled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "head.db")
	d := open(t, path, transport.Config{})
	spec := transport.SubscriptionSpec{Name: "h", Pattern: "l.>", Lease: 300 * time.Millisecond}
	s := subscribe(t, d, spec)
	var all []*transport.Message
	for range 20 {
		all = append(all, msg("l.x"))
	}
	publish(t, d, all...)
	ds := receive(t, s, 20, 5*time.Second)
	if len(ds) != 20 || ds[0].ID != all[0].ID {
		t.Fatalf("first lease: %v, want all 20 in order", ids(ds))
	}
	// The head event stays leased (a slow handler); every later one
	// completes, and more are published and completed behind it.
	settleAll(t, s, ds[1:], transport.Complete)
	publish(t, d, msg("l.x"), msg("l.x"))
	more := receive(t, s, 10, 5*time.Second)
	if len(more) != 2 {
		t.Fatalf("after the head: %v, want the two new events", ids(more))
	}
	settleAll(t, s, more, transport.Complete)
	if st := statsOf(t, d, "h"); st.Active != 1 || st.Completed != 21 || st.Waiting != 0 {
		t.Fatalf("stats %+v, want 1 active, 21 completed", st)
	}
	// The receiver's process goes away without settling.
	s.Close()
	d.Close()
	d = open(t, path, transport.Config{})
	s = subscribe(t, d, spec)
	back := receive(t, s, 10, 5*time.Second)
	if len(back) != 1 || back[0].ID != all[0].ID || back[0].Attempt != 2 {
		t.Fatalf("after reopening: %v, want only the unsettled head %s at attempt 2", ids(back), all[0].ID)
	}
	settleAll(t, s, back, transport.Complete)
	receiveNone(t, s, 400*time.Millisecond)
	if st := statsOf(t, d, "h"); st.Completed != 22 || st.Active != 0 {
		t.Fatalf("stats %+v, want 22 completed", st)
	}
}

// A retry scheduled far ahead keeps its own event, and nothing else:
// retention trims everything the handler finished around it.
func TestLogFarRetryDoesNotHoldRetention(t *testing.T) {
	d, _ := newDB(t)
	d.ret = transport.Retention{CompletedCount: 5, CompletedAge: time.Hour, DeadCount: 5, DeadAge: time.Hour}
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "r.>"})
	far := msg("r.x")
	publish(t, d, far)
	ds := receive(t, s, 1, 5*time.Second)
	settle(t, s, ds[0], transport.Retry, 24*time.Hour, "later")
	const total = 300
	for i := 0; i < total; i += 50 {
		var batch []*transport.Message
		for range 50 {
			batch = append(batch, msg("r.x"))
		}
		publish(t, d, batch...)
		for got := 0; got < 50; {
			ds := receive(t, s, 64, 5*time.Second)
			got += len(ds)
			settleAll(t, s, ds, transport.Complete)
		}
	}
	for range 10 {
		d.pruneNow(t)
	}
	var events int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM events`).Scan(&events); err != nil {
		t.Fatal(err)
	}
	// The far retry's event, the 5 completed ones retention keeps, and
	// the newest event (never deleted, see pruneBoundSQL).
	if events > 7 {
		t.Fatalf("%d events left of %d after pruning, want at most 7 (the far retry's, 5 retained, the newest)", events, total+1)
	}
	var kept int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM events WHERE id = ?`, far.ID).Scan(&kept); err != nil || kept != 1 {
		t.Fatalf("the far retry's event was pruned (%d, %v)", kept, err)
	}
	if st := statsOf(t, d, "h"); st.Delayed != 1 || st.Completed != 5 {
		t.Fatalf("stats %+v, want the retry delayed and 5 completed kept", st)
	}
}

// A handler that takes nothing never holds back another on the same
// events, and its events wait for it in the log.
func TestLogSlowHandlerDoesNotBlockFast(t *testing.T) {
	d, _ := newDB(t)
	slow := subscribe(t, d, transport.SubscriptionSpec{Name: "slow", Pattern: "s.>"})
	fast := subscribe(t, d, transport.SubscriptionSpec{Name: "fast", Pattern: "s.>"})
	// slow leases a first batch and sits on it.
	publish(t, d, msg("s.x"), msg("s.x"))
	held := receive(t, slow, 2, 5*time.Second)
	const total = 1000
	for i := 0; i < total; i += 100 {
		var batch []*transport.Message
		for range 100 {
			batch = append(batch, msg("s.x"))
		}
		publish(t, d, batch...)
	}
	got := 0
	for got < total+2 {
		ds := receive(t, fast, 64, 5*time.Second)
		got += len(ds)
		settleAll(t, fast, ds, transport.Complete)
	}
	receiveNone(t, fast, 100*time.Millisecond)
	if st := statsOf(t, d, "slow"); st.Waiting != total || st.Active != 2 {
		t.Fatalf("slow handler: %+v, want %d waiting and 2 active", st, total)
	}
	d.pruneNow(t)
	var events int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM events`).Scan(&events); err != nil || events != total+2 {
		t.Fatalf("%d events after pruning (%v), want all %d kept for the slow handler", events, err, total+2)
	}
	settleAll(t, slow, held, transport.Complete)
	for got := 0; got < total; {
		ds := receive(t, slow, 64, 5*time.Second)
		got += len(ds)
		settleAll(t, slow, ds, transport.Complete)
	}
}

// Receivers of one handler in two processes (two drivers on one file)
// take every event exactly once between them, while publishes go on.
func TestLogTwoProcessesShareHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	cfg := transport.Config{Retention: transport.Retention{CompletedCount: 100_000}}
	a := open(t, path, cfg)
	b := open(t, path, cfg)
	spec := transport.SubscriptionSpec{Name: "h", Pattern: "p.>", Lease: time.Minute}
	subs := []transport.Subscription{subscribe(t, a, spec), subscribe(t, a, spec), subscribe(t, b, spec), subscribe(t, b, spec)}
	const total = 3000
	var mu sync.Mutex
	seen := map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ds, err := s.Receive(ctx, 16)
				if err != nil {
					if !errors.Is(err, context.Canceled) {
						t.Errorf("Receive: %v", err)
					}
					return
				}
				mu.Lock()
				for _, x := range ds {
					seen[x.ID]++
				}
				mu.Unlock()
				if err := s.Settle(context.Background(), settlements(ds, transport.Complete)); err != nil {
					t.Errorf("Settle: %v", err)
					return
				}
			}
		}()
	}
	var want []string
	for i := 0; i < total; i += 50 {
		var batch []*transport.Message
		for range 50 {
			m := msg("p.x")
			want = append(want, m.ID)
			batch = append(batch, m)
		}
		pub := a
		if i%100 == 0 {
			pub = b
		}
		publish(t, pub, batch...)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == total || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	for _, id := range want {
		if seen[id] != 1 {
			t.Fatalf("event %s delivered %d times, want exactly once (%d of %d seen)", id, seen[id], len(seen), total)
		}
	}
	if st := statsOf(t, a, "h"); st.Completed != total || st.Waiting != 0 || st.Active != 0 {
		t.Fatalf("stats %+v, want %d completed", st, total)
	}
}

func settlements(ds []*transport.Delivery, o transport.Outcome) []transport.Settlement {
	out := make([]transport.Settlement, len(ds))
	for i, x := range ds {
		out[i] = transport.Settlement{Delivery: x, Outcome: o}
	}
	return out
}

// A handler that changes from unordered to ordered takes the events
// waiting for it in the log into rows with their keys, and delivers them
// in key order; changing back leaves nothing behind.
func TestLogSwitchOrdered(t *testing.T) {
	d, _ := newDB(t)
	u := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "o.>"})
	mk := func(key string) *transport.Message { m := msg("o.x"); m.Key = key; return m }
	k1, k2, j1 := mk("k"), mk("k"), mk("j")
	publish(t, d, k1, k2, j1)
	u.Close()
	o := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "o.>", Ordered: true})
	ds := receive(t, o, 10, 5*time.Second)
	if !sameSet(ids(ds), []string{k1.ID, j1.ID}) {
		t.Fatalf("after switching to ordered: %v, want the heads %s and %s", ids(ds), k1.ID, j1.ID)
	}
	settleAll(t, o, ds, transport.Complete)
	ds = receive(t, o, 10, 5*time.Second)
	if len(ds) != 1 || ds[0].ID != k2.ID {
		t.Fatalf("then %v, want %s", ids(ds), k2.ID)
	}
	settleAll(t, o, ds, transport.Complete)
	o.Close()
	u = subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "o.>"})
	receiveNone(t, u, 100*time.Millisecond)
	n := msg("o.x")
	publish(t, d, n)
	if ds := receive(t, u, 10, 5*time.Second); len(ds) != 1 || ds[0].ID != n.ID {
		t.Fatalf("after switching back: %v, want only %s", ids(ds), n.ID)
	}
}
