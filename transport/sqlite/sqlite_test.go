package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

func open(t testing.TB, path string, cfg transport.Config) *driver {
	t.Helper()
	d, err := Open(context.Background(), "sqlite://"+path, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d.(*driver)
}

func newDB(t testing.TB) (*driver, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ripple.db")
	return open(t, path, transport.Config{}), path
}

var idSeq atomic.Int64

func msg(typ string) *transport.Message {
	return &transport.Message{
		ID:    fmt.Sprintf("ev-%d", idSeq.Add(1)),
		Type:  typ,
		Time:  time.Now(),
		Attrs: map[string]string{"source": "test"},
		Data:  []byte(`{"n":1}`),
	}
}

func publish(t testing.TB, d transport.Driver, msgs ...*transport.Message) {
	t.Helper()
	if err := d.Publish(context.Background(), msgs); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func subscribe(t testing.TB, d transport.Driver, spec transport.SubscriptionSpec) transport.Subscription {
	t.Helper()
	if spec.Lease == 0 {
		spec.Lease = 30 * time.Second
	}
	s, err := d.Subscribe(context.Background(), spec)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func receive(t testing.TB, s transport.Subscription, max int, within time.Duration) []*transport.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	ds, err := s.Receive(ctx, max)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return ds
}

// receiveNone asserts that nothing is deliverable for a while.
func receiveNone(t testing.TB, s transport.Subscription, wait time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ds, err := s.Receive(ctx, 10)
	if err == nil {
		t.Fatalf("Receive: got %d deliveries (first %s), want none", len(ds), ds[0].ID)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive: %v, want deadline exceeded", err)
	}
}

func settle(t testing.TB, s transport.Subscription, d *transport.Delivery, o transport.Outcome, delay time.Duration, msg string) {
	t.Helper()
	if err := s.Settle(context.Background(), []transport.Settlement{{Delivery: d, Outcome: o, Delay: delay, Error: msg}}); err != nil {
		t.Fatalf("Settle: %v", err)
	}
}

func ids(ds []*transport.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

func TestPublishReceiveSettle(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "user.*"})
	m := msg("user.created")
	m.Key = "k1"
	m.Priority = 3
	m.Attrs = map[string]string{"source": "svc", "correlationid": "c-1"}
	publish(t, d, m)
	ds := receive(t, s, 10, time.Second)
	if len(ds) != 1 {
		t.Fatalf("got %d deliveries, want 1", len(ds))
	}
	got := ds[0]
	if got.ID != m.ID || got.Type != m.Type || got.Key != "k1" || got.Priority != 3 || string(got.Data) != string(m.Data) {
		t.Fatalf("delivery %+v does not match message %+v", got.Message, *m)
	}
	if !got.Time.Equal(m.Time) {
		t.Fatalf("time %v, want %v", got.Time, m.Time)
	}
	if got.Attrs["source"] != "svc" || got.Attrs["correlationid"] != "c-1" || len(got.Attrs) != 2 {
		t.Fatalf("attrs %v", got.Attrs)
	}
	if got.Attempt != 1 || got.FirstDelivered.IsZero() {
		t.Fatalf("attempt %d first %v", got.Attempt, got.FirstDelivered)
	}
	// Leased: nobody else gets it.
	receiveNone(t, s, 100*time.Millisecond)
	settle(t, s, got, transport.Complete, 0, "")
	receiveNone(t, s, 100*time.Millisecond)
	st, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Completed != 1 || st[0].Waiting != 0 || st[0].Active != 0 || st[0].Handler != "h" || st[0].Pattern != "user.*" {
		t.Fatalf("stats %+v", st)
	}
	// A non-matching type is not delivered.
	publish(t, d, msg("order.created"))
	receiveNone(t, s, 100*time.Millisecond)
}

func TestReceiveWakesOnPublish(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	got := make(chan time.Time, 1)
	go func() {
		ds, err := s.Receive(context.Background(), 1)
		if err == nil && len(ds) == 1 {
			got <- time.Now()
		}
	}()
	time.Sleep(100 * time.Millisecond) // let it block
	start := time.Now()
	publish(t, d, msg("a.b"))
	select {
	case at := <-got:
		if lat := at.Sub(start); lat > 50*time.Millisecond {
			t.Errorf("publish to receive took %v", lat)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Receive did not wake")
	}
}

func TestFanOutAndLateSubscriber(t *testing.T) {
	d, _ := newDB(t)
	a := subscribe(t, d, transport.SubscriptionSpec{Name: "a", Pattern: "user.>"})
	b := subscribe(t, d, transport.SubscriptionSpec{Name: "b", Pattern: "user.signup.completed"})
	m := msg("user.signup.completed")
	publish(t, d, m)
	for _, s := range []transport.Subscription{a, b} {
		ds := receive(t, s, 10, time.Second)
		if len(ds) != 1 || ds[0].ID != m.ID {
			t.Fatalf("got %v", ids(ds))
		}
	}
	// A subscription created after the publish does not get the event.
	c := subscribe(t, d, transport.SubscriptionSpec{Name: "c", Pattern: "user.>"})
	receiveNone(t, c, 100*time.Millisecond)
	m2 := msg("user.deleted")
	publish(t, d, m2)
	if ds := receive(t, c, 10, time.Second); len(ds) != 1 || ds[0].ID != m2.ID {
		t.Fatalf("late subscriber got %v", ids(ds))
	}
	receiveNone(t, b, 100*time.Millisecond) // pattern does not match user.deleted
}

func TestCompetingReceiversTwoDrivers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	d1 := open(t, path, transport.Config{})
	d2 := open(t, path, transport.Config{})
	s1 := subscribe(t, d1, transport.SubscriptionSpec{Name: "work", Pattern: "job.*"})
	s2 := subscribe(t, d2, transport.SubscriptionSpec{Name: "work", Pattern: "job.*"})
	const n = 300
	var mu sync.Mutex
	seen := map[string]int{}
	per := [2]int{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var total atomic.Int64
	for i, s := range []transport.Subscription{s1, s2} {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					ds, err := s.Receive(ctx, 5)
					if err != nil {
						return
					}
					var ss []transport.Settlement
					mu.Lock()
					for _, d := range ds {
						seen[d.ID]++
						per[i]++
						ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
					}
					mu.Unlock()
					time.Sleep(time.Millisecond)
					if err := s.Settle(context.Background(), ss); err != nil {
						t.Error(err)
						return
					}
					if total.Add(int64(len(ds))) >= n {
						cancel()
					}
				}
			}()
		}
	}
	// Publish from both drivers, concurrently.
	var pwg sync.WaitGroup
	for i, d := range []transport.Driver{d1, d2} {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for j := 0; j < n/2; j++ {
				m := msg("job.run")
				m.ID = fmt.Sprintf("job-%d-%d", i, j)
				if err := d.Publish(context.Background(), []*transport.Message{m}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	pwg.Wait()
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("only %d of %d handled", total.Load(), n)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("saw %d distinct events, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("event %s handled %d times", id, c)
		}
	}
	if per[0] == 0 || per[1] == 0 {
		t.Errorf("work not shared: %v", per)
	}
}

func TestLeaseExpiryRedelivers(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Lease: 200 * time.Millisecond})
	m := msg("a.b")
	publish(t, d, m)
	// The lease starts after this instant, however slowly Receive returns.
	start := time.Now()
	first := receive(t, s, 1, time.Second)[0]
	// Never settled: after the lease it comes back with attempt 2.
	second := receive(t, s, 1, 3*time.Second)[0]
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("redelivered after %v, before the lease ran out", el)
	}
	if second.ID != m.ID || second.Attempt != 2 {
		t.Fatalf("redelivery %s attempt %d", second.ID, second.Attempt)
	}
	if !second.FirstDelivered.Equal(first.FirstDelivered) {
		t.Fatalf("first delivered changed: %v -> %v", first.FirstDelivered, second.FirstDelivered)
	}
	// The stale lease's settlement is ignored.
	settle(t, s, first, transport.Dead, 0, "stale")
	if dl, _ := d.DeadLetters(context.Background(), "h", 10); len(dl) != 0 {
		t.Fatalf("stale settlement took effect: %v", dl)
	}
	// Extend keeps the current lease alive past its original end.
	if err := s.Extend(context.Background(), []*transport.Delivery{second}, time.Second); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, s, 400*time.Millisecond)
	settle(t, s, second, transport.Complete, 0, "")
	receiveNone(t, s, 300*time.Millisecond)
}

func TestRetryDelayAndRelease(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	m := msg("a.b")
	publish(t, d, m)
	d1 := receive(t, s, 1, time.Second)[0]
	settle(t, s, d1, transport.Retry, 300*time.Millisecond, "boom")
	start := time.Now()
	receiveNone(t, s, 150*time.Millisecond)
	st, _ := d.Stats(context.Background())
	if st[0].Delayed != 1 || st[0].Failed != 1 {
		t.Fatalf("stats during backoff %+v", st[0])
	}
	d2 := receive(t, s, 1, 2*time.Second)[0]
	if el := time.Since(start); el < 280*time.Millisecond || el > time.Second {
		t.Fatalf("retry after %v, want ~300ms", el)
	}
	if d2.Attempt != 2 {
		t.Fatalf("attempt %d, want 2", d2.Attempt)
	}
	// Release does not count the attempt.
	settle(t, s, d2, transport.Release, 0, "")
	d3 := receive(t, s, 1, time.Second)[0]
	if d3.Attempt != 2 {
		t.Fatalf("after release attempt %d, want 2", d3.Attempt)
	}
	settle(t, s, d3, transport.Release, 200*time.Millisecond, "")
	receiveNone(t, s, 100*time.Millisecond)
	d4 := receive(t, s, 1, time.Second)[0]
	if d4.Attempt != 2 {
		t.Fatalf("after delayed release attempt %d, want 2", d4.Attempt)
	}
	settle(t, s, d4, transport.Complete, 0, "")
}

func TestDeadLetters(t *testing.T) {
	d, _ := newDB(t)
	ctx := context.Background()
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.*"})
	var ms []*transport.Message
	for range 3 {
		m := msg("a.b")
		ms = append(ms, m)
		publish(t, d, m)
	}
	for i := range 3 {
		dl := receive(t, s, 1, time.Second)[0]
		if dl.ID != ms[i].ID {
			t.Fatalf("order: got %s want %s", dl.ID, ms[i].ID)
		}
		settle(t, s, dl, transport.Retry, 0, "first failure")
		dl = receive(t, s, 1, time.Second)[0]
		settle(t, s, dl, transport.Dead, 0, fmt.Sprintf("fatal %d", i))
		time.Sleep(2 * time.Millisecond)
	}
	receiveNone(t, s, 100*time.Millisecond)
	list, err := d.DeadLetters(ctx, "h", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("%d dead letters", len(list))
	}
	for i, dl := range list {
		if dl.ID != ms[i].ID || dl.Error != fmt.Sprintf("fatal %d", i) || dl.Attempts != 2 || dl.Handler != "h" ||
			dl.FirstAttempt.IsZero() || dl.DeadAt.Before(dl.FirstAttempt) || string(dl.Data) != string(ms[i].Data) || dl.Attrs["source"] != "test" {
			t.Fatalf("dead letter %d: %+v", i, dl)
		}
	}
	if l, _ := d.DeadLetters(ctx, "h", 2); len(l) != 2 || l[0].ID != ms[0].ID {
		t.Fatalf("limit: %d", len(l))
	}
	st, _ := d.Stats(ctx)
	if st[0].Dead != 3 || st[0].Failed != 6 {
		t.Fatalf("stats %+v", st[0])
	}
	// Requeue one: fresh attempt budget.
	n, err := d.Requeue(ctx, "h", []string{ms[1].ID})
	if err != nil || n != 1 {
		t.Fatalf("requeue: %d %v", n, err)
	}
	got := receive(t, s, 10, time.Second)
	if len(got) != 1 || got[0].ID != ms[1].ID || got[0].Attempt != 1 {
		t.Fatalf("requeued delivery %v attempt %d", ids(got), got[0].Attempt)
	}
	settle(t, s, got[0], transport.Complete, 0, "")
	// Purge one, then all.
	if n, err := d.Purge(ctx, "h", []string{ms[0].ID, "nope"}); err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
	if l, _ := d.DeadLetters(ctx, "h", 0); len(l) != 1 || l[0].ID != ms[2].ID {
		t.Fatalf("after purge: %v", l)
	}
	if n, err := d.Requeue(ctx, "h", nil); err != nil || n != 1 {
		t.Fatalf("requeue all: %d %v", n, err)
	}
	got = receive(t, s, 10, time.Second)
	settle(t, s, got[0], transport.Dead, 0, "again")
	if n, err := d.Purge(ctx, "h", nil); err != nil || n != 1 {
		t.Fatalf("purge all: %d %v", n, err)
	}
	for _, err := range []error{
		func() error { _, err := d.DeadLetters(ctx, "missing", 0); return err }(),
		func() error { _, err := d.Requeue(ctx, "missing", nil); return err }(),
		func() error { _, err := d.Purge(ctx, "missing", nil); return err }(),
		func() error { _, err := d.Replay(ctx, "missing", time.Time{}); return err }(),
	} {
		if !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("unknown handler: %v", err)
		}
	}
}

func TestPriority(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	var want []string
	prios := []int{0, 5, 1, 5, -2, 9}
	var ms []*transport.Message
	for _, p := range prios {
		m := msg("a.b")
		m.Priority = p
		ms = append(ms, m)
	}
	publish(t, d, ms...)
	// priority DESC, then publish order
	for _, i := range []int{5, 1, 3, 2, 0, 4} {
		want = append(want, ms[i].ID)
	}
	var got []string
	ds := receive(t, s, 3, time.Second)
	got = append(got, ids(ds)...)
	ds = receive(t, s, 10, time.Second)
	got = append(got, ids(ds)...)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("order %v, want %v", got, want)
	}
}

func TestDelay(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	late := msg("a.b")
	late.Delay = 300 * time.Millisecond
	now := msg("a.b")
	start := time.Now()
	publish(t, d, late, now)
	ds := receive(t, s, 10, time.Second)
	if len(ds) != 1 || ds[0].ID != now.ID {
		t.Fatalf("got %v, want only the undelayed", ids(ds))
	}
	ds = receive(t, s, 10, 2*time.Second)
	el := time.Since(start)
	if len(ds) != 1 || ds[0].ID != late.ID || el < 280*time.Millisecond || el > 800*time.Millisecond {
		t.Fatalf("got %v after %v", ids(ds), el)
	}
}

// TestOrderedKeyHeldWhileLeased replays a key's completed event while a
// later event of the key is leased: the replayed one waits for it.
func TestOrderedKeyHeldWhileLeased(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Ordered: true})
	first, second := msg("a.b"), msg("a.b")
	first.Key, second.Key = "k", "k"
	publish(t, d, first)
	settle(t, s, receive(t, s, 1, time.Second)[0], transport.Complete, 0, "")
	publish(t, d, second)
	running := receive(t, s, 1, time.Second)[0]
	if n, err := d.Replay(context.Background(), "h", time.Time{}); err != nil || n == 0 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	receiveNone(t, s, 300*time.Millisecond) // the second is leased
	settle(t, s, running, transport.Complete, 0, "")
	if ds := receive(t, s, 10, time.Second); len(ds) != 1 || ds[0].ID != first.ID {
		t.Fatalf("after the leased one completed: %v, want the replayed %s", ids(ds), first.ID)
	}
}

func TestOrderedPerKey(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Ordered: true})
	mk := func(key string) *transport.Message { m := msg("a.b"); m.Key = key; return m }
	a1, b1, a2, n1, b2, a3 := mk("A"), mk("B"), mk("A"), mk(""), mk("B"), mk("A")
	publish(t, d, a1, b1, a2, n1, b2, a3)
	ds := receive(t, s, 10, time.Second)
	if strings.Join(ids(ds), ",") != strings.Join([]string{a1.ID, b1.ID, n1.ID}, ",") {
		t.Fatalf("first batch %v, want heads of A, B and the unkeyed one", ids(ds))
	}
	byID := map[string]*transport.Delivery{}
	for _, x := range ds {
		byID[x.ID] = x
	}
	// A's head fails and waits for a retry: A is held back, B is not.
	settle(t, s, byID[a1.ID], transport.Retry, 300*time.Millisecond, "fail")
	settle(t, s, byID[b1.ID], transport.Complete, 0, "")
	settle(t, s, byID[n1.ID], transport.Complete, 0, "")
	ds = receive(t, s, 10, time.Second)
	if len(ds) != 1 || ds[0].ID != b2.ID {
		t.Fatalf("got %v, want only B2 while A1 waits", ids(ds))
	}
	settle(t, s, ds[0], transport.Complete, 0, "")
	ds = receive(t, s, 10, 2*time.Second)
	if len(ds) != 1 || ds[0].ID != a1.ID || ds[0].Attempt != 2 {
		t.Fatalf("got %v, want A1 again", ids(ds))
	}
	// A dead head does not block its key.
	settle(t, s, ds[0], transport.Dead, 0, "gave up")
	ds = receive(t, s, 10, time.Second)
	if len(ds) != 1 || ds[0].ID != a2.ID {
		t.Fatalf("got %v, want A2", ids(ds))
	}
	settle(t, s, ds[0], transport.Complete, 0, "")
	ds = receive(t, s, 10, time.Second)
	if len(ds) != 1 || ds[0].ID != a3.ID {
		t.Fatalf("got %v, want A3", ids(ds))
	}
}

func TestDedup(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	m := msg("a.b")
	publish(t, d, m)
	dup := *m
	dup.Data = []byte("other")
	publish(t, d, &dup, &dup) // not an error, stores nothing
	ds := receive(t, s, 10, time.Second)
	if len(ds) != 1 || string(ds[0].Data) != string(m.Data) {
		t.Fatalf("got %d deliveries", len(ds))
	}
	settle(t, s, ds[0], transport.Complete, 0, "")
	publish(t, d, m)
	receiveNone(t, s, 100*time.Millisecond)
	// Concurrent duplicate publishes in one group commit.
	m2 := msg("a.b")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); publish(t, d, m2) }()
	}
	wg.Wait()
	if ds := receive(t, s, 10, time.Second); len(ds) != 1 {
		t.Fatalf("got %d deliveries of a concurrently duplicated id", len(ds))
	}
}

func TestReplay(t *testing.T) {
	d, _ := newDB(t)
	ctx := context.Background()
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.*"})
	old := msg("a.b")
	publish(t, d, old)
	time.Sleep(5 * time.Millisecond)
	since := time.Now()
	m1, m2, other := msg("a.c"), msg("a.d"), msg("x.y")
	publish(t, d, m1, m2, other)
	ds := receive(t, s, 10, time.Second)
	if len(ds) != 3 {
		t.Fatalf("got %d", len(ds))
	}
	for _, x := range ds {
		settle(t, s, x, transport.Complete, 0, "")
	}
	// A subscription created later can replay events from before it existed.
	late := subscribe(t, d, transport.SubscriptionSpec{Name: "late", Pattern: "a.>"})
	n, err := d.Replay(ctx, "h", since)
	if err != nil || n != 2 {
		t.Fatalf("replay: %d %v", n, err)
	}
	ds = receive(t, s, 10, time.Second)
	if strings.Join(ids(ds), ",") != m1.ID+","+m2.ID || ds[0].Attempt != 1 {
		t.Fatalf("replayed %v", ids(ds))
	}
	if n, err := d.Replay(ctx, "late", time.Time{}); err != nil || n != 3 {
		t.Fatalf("replay late: %d %v", n, err)
	}
	if ds := receive(t, late, 10, time.Second); len(ds) != 3 || ds[0].ID != old.ID {
		t.Fatalf("late replay %v", ids(ds))
	}
}

func TestClaims(t *testing.T) {
	d, _ := newDB(t)
	ctx := context.Background()
	var claimed, busy atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := d.Claim(ctx, "h", "ev-1", time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			switch r {
			case transport.Claimed:
				claimed.Add(1)
			case transport.Busy:
				busy.Add(1)
			default:
				t.Errorf("result %v", r)
			}
		}()
	}
	wg.Wait()
	if claimed.Load() != 1 || busy.Load() != 31 {
		t.Fatalf("claimed %d busy %d", claimed.Load(), busy.Load())
	}
	// Failure drops the claim; success makes it done.
	if err := d.Finish(ctx, "h", "ev-1", false); err != nil {
		t.Fatal(err)
	}
	if r, _ := d.Claim(ctx, "h", "ev-1", time.Minute); r != transport.Claimed {
		t.Fatalf("after failed finish: %v", r)
	}
	if err := d.Finish(ctx, "h", "ev-1", true); err != nil {
		t.Fatal(err)
	}
	if r, _ := d.Claim(ctx, "h", "ev-1", time.Minute); r != transport.Done {
		t.Fatalf("after success: %v", r)
	}
	// Other handlers are independent; an expired claim can be taken over.
	if r, _ := d.Claim(ctx, "other", "ev-1", 50*time.Millisecond); r != transport.Claimed {
		t.Fatalf("other handler: %v", r)
	}
	if r, _ := d.Claim(ctx, "other", "ev-1", time.Minute); r != transport.Busy {
		t.Fatalf("held: %v", r)
	}
	time.Sleep(80 * time.Millisecond)
	if r, _ := d.Claim(ctx, "other", "ev-1", time.Minute); r != transport.Claimed {
		t.Fatalf("expired: %v", r)
	}
}

func TestRetention(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ret.db")
	d := open(t, path, transport.Config{Retention: transport.Retention{
		CompletedCount: 3, DeadCount: -1, DedupWindow: -1,
	}})
	ctx := context.Background()
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	var ms []*transport.Message
	for range 10 {
		m := msg("a.b")
		ms = append(ms, m)
	}
	publish(t, d, ms...)
	ds := receive(t, s, 10, time.Second)
	for i, x := range ds {
		o := transport.Complete
		if i >= 8 {
			o = transport.Dead
		}
		settle(t, s, x, o, 0, "")
	}
	unreferenced := msg("nobody.listens")
	publish(t, d, unreferenced)
	d.pruneNow(t)
	st, _ := d.Stats(ctx)
	if st[0].Completed != 3 || st[0].Dead != 0 {
		t.Fatalf("after prune %+v", st[0])
	}
	var events int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM events`).Scan(&events); err != nil {
		t.Fatal(err)
	}
	// Completed history is a count in the handler's lease windows, which
	// needs no event: with no dedup window only the newest event stays,
	// unreferenced, so that its seq is not reused.
	if events != 1 {
		t.Fatalf("%d events kept, want only the newest", events)
	}
	// With no dedup window, a pruned id can be published again.
	publish(t, d, ms[0])
	if ds := receive(t, s, 10, time.Second); len(ds) != 1 || ds[0].ID != ms[0].ID {
		t.Fatalf("republish after prune: %v", ids(ds))
	}
}

func TestRetentionByAge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "age.db")
	d := open(t, path, transport.Config{Retention: transport.Retention{CompletedAge: 50 * time.Millisecond}})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	publish(t, d, msg("a.b"), msg("a.b"))
	for _, x := range receive(t, s, 10, time.Second) {
		settle(t, s, x, transport.Complete, 0, "")
	}
	d.pruneNow(t)
	if st, _ := d.Stats(context.Background()); st[0].Completed != 2 {
		t.Fatalf("pruned too early: %+v", st[0])
	}
	time.Sleep(80 * time.Millisecond)
	d.pruneNow(t)
	if st, _ := d.Stats(context.Background()); st[0].Completed != 0 {
		t.Fatalf("not pruned by age: %+v", st[0])
	}
	// Events stay for the (default) dedup window.
	var events int
	d.rdb.QueryRow(`SELECT count(*) FROM events`).Scan(&events)
	if events != 2 {
		t.Fatalf("events %d, want 2 kept for dedup", events)
	}
}

func TestReopenKeepsState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "re.db")
	d1, err := Open(context.Background(), "sqlite://"+path+"?synchronous=normal", transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s1 := subscribe(t, d1, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	m := msg("a.b")
	publish(t, d1, m)
	_ = s1
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	d2 := open(t, path, transport.Config{})
	s2 := subscribe(t, d2, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	if ds := receive(t, s2, 10, time.Second); len(ds) != 1 || ds[0].ID != m.ID {
		t.Fatalf("after reopen %v", ids(ds))
	}
}

func TestCloseIdempotentAndErrors(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	blocked := make(chan error, 1)
	go func() {
		_, err := s.Receive(context.Background(), 1)
		blocked <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case err := <-blocked:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Receive returned %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake Receive")
	}
	ctx := context.Background()
	checks := map[string]error{
		"Publish": d.Publish(ctx, []*transport.Message{msg("a.b")}),
		"Subscribe": func() error {
			_, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "x", Pattern: "a.b"})
			return err
		}(),
		"Receive": func() error { _, err := s.Receive(ctx, 1); return err }(),
		"Settle":  s.Settle(ctx, []transport.Settlement{{Delivery: &transport.Delivery{Token: token{}}, Outcome: transport.Complete}}),
		"Stats":   func() error { _, err := d.Stats(ctx); return err }(),
		"Claim":   func() error { _, err := d.Claim(ctx, "h", "e", time.Second); return err }(),
		"Requeue": func() error { _, err := d.Requeue(ctx, "h", nil); return err }(),
	}
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	// Subscription Close wakes and fails its own receivers only.
	d2, _ := newDB(t)
	s2 := subscribe(t, d2, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	s2.Close()
	if _, err := s2.Receive(ctx, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Receive on closed subscription: %v", err)
	}
	s3 := subscribe(t, d2, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	publish(t, d2, msg("a.b"))
	receive(t, s3, 1, time.Second)
}

func TestBadURLs(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ url, want string }{
		{"sqlite://", "no file path"},
		{"sqlite://?synchronous=full", "no file path"},
		{"sqlite://" + dir + "/a.db?sync=full", `unknown parameter "sync"; accepted parameters: synchronous`},
		{"sqlite://" + dir + "/a.db?synchronous=off", "accepted values are full"},
		{"sqlite://:memory:", "memory://"},
		{"redis://x", "must start with sqlite://"},
		{"sqlite://" + dir + "/missing/dir/a.db", "directory exists"},
		{"sqlite://" + dir, "is a directory"},
	} {
		_, err := Open(context.Background(), c.url, transport.Config{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%q) = %v, want error containing %q", c.url, err, c.want)
		}
	}
	o, err := parseURL("sqlite:///var/lib/app%20x.db?synchronous=NORMAL")
	if err != nil || o.path != "/var/lib/app x.db" || o.synchronous != "NORMAL" {
		t.Fatalf("parse absolute: %+v %v", o, err)
	}
	o, err = parseURL("sqlite://app.db")
	if err != nil || o.path != "app.db" || o.synchronous != "FULL" {
		t.Fatalf("parse relative: %+v %v", o, err)
	}
	if _, ok := transport.Lookup("sqlite"); !ok {
		t.Fatal("scheme not registered")
	}
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	openErr := func(path string) error {
		d, err := Open(ctx, "sqlite://"+path, transport.Config{})
		if err == nil {
			d.Close()
		}
		return err
	}

	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("hello, this is a text file and not a database at all\n"), 0o644)
	if err := openErr(text); err == nil || !strings.Contains(err.Error(), "is not a SQLite database") {
		t.Errorf("text file: %v", err)
	}

	foreign := filepath.Join(dir, "app.db")
	raw := rawDB(t, foreign)
	raw.Exec(`CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)`)
	raw.Close()
	before, _ := os.ReadFile(foreign)
	if err := openErr(foreign); err == nil || !strings.Contains(err.Error(), "not a Ripple database") || !strings.Contains(err.Error(), "users") {
		t.Errorf("foreign db: %v", err)
	}
	if after, _ := os.ReadFile(foreign); string(before) != string(after) {
		t.Errorf("opening a foreign database modified it")
	}

	newer := filepath.Join(dir, "newer.db")
	d := open(t, newer, transport.Config{})
	d.Close()
	raw = rawDB(t, newer)
	if _, err := raw.Exec(`UPDATE ripple_meta SET value = 99 WHERE key = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if err := openErr(newer); err == nil || !strings.Contains(err.Error(), "newer Ripple (schema version 99") {
		t.Errorf("newer schema: %v", err)
	}

	garbage := filepath.Join(dir, "garbage.db")
	d = open(t, garbage, transport.Config{})
	publish(t, d, msg("a.b"))
	d.Close()
	b, _ := os.ReadFile(garbage)
	for i := 100; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	os.WriteFile(garbage, b, 0o644)
	os.Remove(garbage + "-wal")
	os.Remove(garbage + "-shm")
	if err := openErr(garbage); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("garbage: %v", err)
	}
}
