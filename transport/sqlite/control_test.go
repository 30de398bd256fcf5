package sqlite

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Two drivers on one file stand for two processes.
func TestPauseSharedThroughFile(t *testing.T) {
	a, path := newDB(t)
	b := open(t, path, transport.Config{})
	spec := transport.SubscriptionSpec{Name: "h", Pattern: "p.x"}
	sa := subscribe(t, a, spec)
	sb := subscribe(t, b, spec)
	if err := a.Pause(context.Background(), "h"); err != nil {
		t.Fatal(err)
	}
	if err := a.Pause(context.Background(), "h"); err != nil {
		t.Fatalf("pausing a paused handler: %v", err)
	}
	if err := a.Pause(context.Background(), "nope"); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("pausing an unknown handler: %v", err)
	}
	publish(t, a, msg("p.x"), msg("p.x"))
	// Neither process hands anything out while paused.
	receiveNone(t, sb, 300*time.Millisecond)
	receiveNone(t, sa, 100*time.Millisecond)
	st, err := b.Stats(context.Background())
	if err != nil || len(st) != 1 || !st[0].Paused || st[0].Waiting != 2 {
		t.Fatalf("stats while paused: %+v %v", st, err)
	}
	// Resume in one process wakes a receiver blocked in the other.
	got := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ds, _ := sb.Receive(ctx, 10)
		got <- len(ds)
	}()
	time.Sleep(50 * time.Millisecond)
	if err := a.Resume(context.Background(), "h"); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != 2 {
		t.Fatalf("after resume the other process received %d, want 2", n)
	}
	st, _ = a.Stats(context.Background())
	if st[0].Paused {
		t.Fatal("stats still paused after resume")
	}
}

// No interval of length per holds more than n starts reserved by two
// processes sharing one file.
func TestSharedRateLimitSlidingWindow(t *testing.T) {
	a, path := newDB(t)
	b := open(t, path, transport.Config{})
	const n, per, total = 5, 300 * time.Millisecond, 24
	var mu sync.Mutex
	var starts []time.Time
	var wg sync.WaitGroup
	for _, d := range []*driver{a, b} {
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range total / 6 {
					wait, err := d.Reserve(context.Background(), "h", n, per)
					if err != nil {
						t.Error(err)
						return
					}
					// The reserved start, on the shared clock.
					at := time.Now().Add(wait)
					mu.Lock()
					starts = append(starts, at)
					mu.Unlock()
					time.Sleep(wait)
				}
			}()
		}
	}
	wg.Wait()
	slices.SortFunc(starts, func(x, y time.Time) int { return x.Compare(y) })
	if len(starts) != total {
		t.Fatalf("%d reservations, want %d", len(starts), total)
	}
	// The reserved times are computed in the writers' transactions; the
	// times recorded here may be late by scheduling, never early, so
	// allow a few milliseconds of slack in the recorded spacing.
	const slack = 20 * time.Millisecond
	for i := 0; i+n < len(starts); i++ {
		if gap := starts[i+n].Sub(starts[i]); gap < per-slack {
			t.Fatalf("starts %d and %d are %v apart: %d starts within %v (limit %d per %v)", i, i+n, gap, n+1, gap, n, per)
		}
	}
	// And it does not throttle more than the bound needs: 24 starts at
	// 5 per 300ms need a little over 4 periods.
	if span := starts[len(starts)-1].Sub(starts[0]); span > 4*per+per/2+time.Second {
		t.Fatalf("24 starts took %v", span)
	}
	if _, err := a.Reserve(context.Background(), "h", 0, per); err == nil {
		t.Fatal("n = 0 accepted")
	}
}

// Exact check on the reserved times themselves, free of scheduling noise.
func TestRateLimitReservedTimes(t *testing.T) {
	a, path := newDB(t)
	b := open(t, path, transport.Config{})
	const n, per = 3, time.Hour
	var waits []time.Duration
	for i := range 7 {
		d := []*driver{a, b}[i%2]
		w, err := d.Reserve(context.Background(), "h", n, per)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	for i, w := range waits {
		want := time.Duration(i/n) * per
		if w > want || w < want-time.Minute {
			t.Fatalf("reservation %d waits %v, want about %v (%v)", i, w, want, waits)
		}
	}
}

func TestEphemeralDeletedOnLastClose(t *testing.T) {
	d, _ := newDB(t)
	spec := transport.SubscriptionSpec{Name: "tail.1", Pattern: "e.>", Ephemeral: true}
	s1, err := d.Subscribe(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := d.Subscribe(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, d, msg("e.a"), msg("e.b"))
	if names := subNames(t, d); !slices.Contains(names, "tail.1") {
		t.Fatalf("subscriptions %v", names)
	}
	s1.Close()
	if names := subNames(t, d); !slices.Contains(names, "tail.1") {
		t.Fatal("ephemeral subscription deleted while a receiver still holds it")
	}
	s2.Close()
	if names := subNames(t, d); len(names) != 0 {
		t.Fatalf("after the last close: subscriptions %v, want none", names)
	}
	var rows int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM deliveries`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("deliveries left: %d %v", rows, err)
	}
	// A durable subscription of the same name is another thing.
	durable := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "e.>"})
	_ = durable
	if _, err := d.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "h", Pattern: "e.>", Ephemeral: true}); err == nil {
		t.Fatal("a durable handler reopened as ephemeral")
	}
}

func subNames(t testing.TB, d *driver) []string {
	t.Helper()
	st, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range st {
		names = append(names, s.Handler)
	}
	return names
}

// A receiver that never closes (its process was killed) leaves an
// ephemeral subscription that another process reaps after a few leases,
// while one whose receiver keeps waiting in Receive stays.
func TestEphemeralReapedWhenAbandoned(t *testing.T) {
	path := t.TempDir() + "/ripple.db"
	killed, err := Open(context.Background(), "sqlite://"+path, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	lease := 200 * time.Millisecond
	if _, err := killed.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "tail.dead", Pattern: "e.>", Ephemeral: true, Lease: lease}); err != nil {
		t.Fatal(err)
	}
	// Simulate kill -9: forget the driver's ephemeral holdings so Close
	// does not delete them, then close its files.
	kd := killed.(*driver)
	kd.nmu.Lock()
	clear(kd.ephemeral)
	kd.nmu.Unlock()
	kd.Close()

	d := open(t, path, transport.Config{})
	alive := subscribe(t, d, transport.SubscriptionSpec{Name: "tail.alive", Pattern: "e.>", Ephemeral: true, Lease: lease})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recvErr := make(chan error, 1)
	go func() {
		for {
			ds, err := alive.Receive(ctx, 10)
			if err != nil {
				recvErr <- err
				return
			}
			settleAll(t, alive, ds, transport.Complete)
		}
	}()
	publish(t, d, msg("e.x"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		d.pruneNow(t)
		names := subNames(t, d)
		if !slices.Contains(names, "tail.dead") {
			if !slices.Contains(names, "tail.alive") {
				t.Fatal("the live ephemeral subscription was reaped too")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("abandoned ephemeral subscription never reaped: %v", names)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Several more leases later the live one is still there.
	time.Sleep(5 * lease)
	d.pruneNow(t)
	if !slices.Contains(subNames(t, d), "tail.alive") {
		t.Fatal("the live ephemeral subscription was reaped while its receiver waited")
	}
	select {
	case err := <-recvErr:
		t.Fatalf("live receiver failed: %v", err)
	default:
	}
}

func TestStartFrom(t *testing.T) {
	d, _ := newDB(t)
	// A subscription must exist for events to be retained beyond the
	// dedup window; the default window keeps them anyway.
	old := msg("s.x")
	publish(t, d, old)
	time.Sleep(20 * time.Millisecond)
	from := time.Now()
	time.Sleep(20 * time.Millisecond)
	mid1, mid2, other := msg("s.x"), msg("s.x"), msg("o.x")
	publish(t, d, mid1, mid2, other)

	s := subscribe(t, d, transport.SubscriptionSpec{Name: "proj", Pattern: "s.>", From: from})
	late := msg("s.x")
	publish(t, d, late)
	var ids []string
	for len(ids) < 3 {
		ds := receive(t, s, 10, 10*time.Second)
		for _, x := range ds {
			ids = append(ids, x.ID)
		}
		settleAll(t, s, ds, transport.Complete)
	}
	receiveNone(t, s, 100*time.Millisecond)
	if want := []string{mid1.ID, mid2.ID, late.ID}; !slices.Equal(ids, want) {
		t.Fatalf("delivered %v, want %v", ids, want)
	}

	all := subscribe(t, d, transport.SubscriptionSpec{Name: "all", Pattern: "s.>", From: transport.Beginning})
	ds := receive(t, all, 10, 10*time.Second)
	if len(ds) != 4 || ds[0].ID != old.ID {
		t.Fatalf("from the beginning: %d deliveries", len(ds))
	}
	// An existing subscription keeps its position whatever From says.
	settleAll(t, all, ds, transport.Complete)
	again := subscribe(t, d, transport.SubscriptionSpec{Name: "all", Pattern: "s.>", From: transport.Beginning})
	receiveNone(t, again, 100*time.Millisecond)
}
