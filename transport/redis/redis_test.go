package redis

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

func TestLuaMatchAgreesWithGo(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := goredis.NewScript(luaLib + `if match(ARGV[1], ARGV[2]) then return 1 end return 0`)
	cases := [][2]string{
		{"user.signup", "user.signup"}, {"user.signup", "user.login"}, {"user.*", "user.signup"},
		{"user.*", "user.signup.done"}, {"user.>", "user.signup.done"}, {"user.>", "user"},
		{"user.>", "user.a"}, {"*.signup", "user.signup"}, {"*.*", "a.b"}, {"*.*", "a.b.c"},
		{">", "a.b"}, {"a.*.c", "a.b.c"}, {"a.*.c", "a.b.d"}, {"a.b", "a.b.c"}, {"a.b.c", "a.b"},
		{"order.>", "orders.x"}, {"a.*.>", "a.b"}, {"a.*.>", "a.b.c.d"},
	}
	for _, c := range cases {
		got, err := s.Run(context.Background(), d.client, nil, c[0], c[1]).Int()
		if err != nil {
			t.Fatal(err)
		}
		if want := transport.Match(c[0], c[1]); (got == 1) != want {
			t.Errorf("Lua match(%q, %q) = %v, transport.Match = %v", c[0], c[1], got == 1, want)
		}
	}
}

func TestFanOutAndCompetingConsumers(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d1 := openURL(t, u, transport.Config{})
	d2 := openURL(t, u, transport.Config{}) // a second "process"
	a1 := subscribe(t, d1, "a", "user.*", time.Minute)
	a2 := subscribe(t, d2, "a", "user.*", time.Minute)
	b := subscribe(t, d1, "b", "user.signup", time.Minute)
	c := subscribe(t, d2, "c", "order.>", time.Minute)

	const n = 40
	for i := 0; i < n; i++ {
		publish(t, d1, msg("user.signup"))
	}
	got := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, s := range []transport.Subscription{a1, a2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ds, err := s.Receive(ctx, 3)
				if err != nil {
					return
				}
				mu.Lock()
				for _, d := range ds {
					got[d.ID]++
				}
				done := len(got) == n
				mu.Unlock()
				if err := s.Settle(ctx, completeAll(ds)); err != nil {
					t.Error(err)
				}
				if done {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if len(got) != n {
		t.Fatalf("competing receivers of a got %d distinct events, want %d", len(got), n)
	}
	for id, k := range got {
		if k != 1 {
			t.Errorf("event %s delivered %d times to handler a", id, k)
		}
	}
	bs := receive(t, b, n, 3*time.Second)
	if len(bs) != n {
		t.Fatalf("b got %d", len(bs))
	}
	receiveNone(t, c, 200*time.Millisecond)
}

func completeAll(ds []*transport.Delivery) []transport.Settlement {
	ss := make([]transport.Settlement, len(ds))
	for i, d := range ds {
		ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Complete}
	}
	return ss
}

func TestMessageRoundTrip(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	m := &transport.Message{ID: "id-1", Type: "a.b", Key: "k1", Time: time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC),
		Attrs: map[string]string{"source": "src", "x-custom": "v"}, Data: []byte{0, 1, 2, 255, '"'}}
	publish(t, d, m)
	got := receive(t, s, 1, 2*time.Second)[0]
	if got.ID != m.ID || got.Type != m.Type || got.Key != m.Key || !got.Time.Equal(m.Time) ||
		string(got.Data) != string(m.Data) || got.Attrs["source"] != "src" || got.Attrs["x-custom"] != "v" || len(got.Attrs) != 2 {
		t.Fatalf("round trip: got %+v, want %+v", got.Message, *m)
	}
	if got.Attempt != 1 || got.FirstDelivered.IsZero() {
		t.Fatalf("attempt %d first %v", got.Attempt, got.FirstDelivered)
	}
}

func TestRetryBackoffAndRelease(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	m1, m2 := msg("a.b"), msg("a.b")
	publish(t, d, m1)
	d1 := receive(t, s, 1, 2*time.Second)[0]
	start := time.Now()
	settle(t, s, transport.Retry, 400*time.Millisecond, d1)
	// A retrying event does not block others.
	publish(t, d, m2)
	other := receive(t, s, 1, 2*time.Second)[0]
	if other.ID != m2.ID {
		t.Fatalf("got %s while %s waits for its retry, want %s", other.ID, m1.ID, m2.ID)
	}
	settle(t, s, transport.Complete, 0, other)
	again := receive(t, s, 1, 3*time.Second)[0]
	if waited := time.Since(start); waited < 400*time.Millisecond {
		t.Fatalf("retry came after %v, before its 400ms backoff", waited)
	}
	if again.ID != m1.ID || again.Attempt != 2 {
		t.Fatalf("retry: got %s attempt %d, want %s attempt 2", again.ID, again.Attempt, m1.ID)
	}
	if !again.FirstDelivered.Equal(d1.FirstDelivered) {
		t.Fatalf("FirstDelivered changed across attempts: %v then %v", d1.FirstDelivered, again.FirstDelivered)
	}
	settle(t, s, transport.Release, 0, again)
	rel := receive(t, s, 1, 2*time.Second)[0]
	if rel.Attempt != 2 {
		t.Fatalf("after Release attempt = %d, want 2 (release does not count)", rel.Attempt)
	}
	settle(t, s, transport.Complete, 0, rel)
	receiveNone(t, s, 300*time.Millisecond)
	st := stats(t, d, "h")
	if st.Failed != 1 || st.Completed != 2 || st.Waiting != 0 || st.Active != 0 || st.Delayed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func stats(t testing.TB, d *Driver, name string) transport.Stats {
	t.Helper()
	all, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Handler == name {
			return s
		}
	}
	t.Fatalf("no stats for %q in %+v", name, all)
	return transport.Stats{}
}

func TestLeaseExpiryReclaimsAndStaleSettleIgnored(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d1 := openURL(t, u, transport.Config{})
	d2 := openURL(t, u, transport.Config{})
	s1 := subscribe(t, d1, "h", "a.b", 300*time.Millisecond)
	s2 := subscribe(t, d2, "h", "a.b", 300*time.Millisecond)
	publish(t, d1, msg("a.b"))
	first := receive(t, s1, 1, 2*time.Second)[0]
	// s1 "hangs": s2 gets it after the lease, as attempt 2.
	start := time.Now()
	second := receive(t, s2, 1, 3*time.Second)[0]
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("reclaimed after %v, before the lease ran out", el)
	}
	if second.ID != first.ID || second.Attempt != 2 {
		t.Fatalf("reclaim: got %s attempt %d", second.ID, second.Attempt)
	}
	// The stale holder's outcome is ignored.
	settle(t, s1, transport.Dead, 0, first)
	if st := stats(t, d1, "h"); st.Dead != 0 || st.Active != 1 {
		t.Fatalf("stale settle changed state: %+v", st)
	}
	settle(t, s2, transport.Complete, 0, second)
	// Completions are acknowledged in the background; Stats of the
	// process that settled waits for its own.
	if st := stats(t, d2, "h"); st.Completed != 1 || st.Active != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestExtendKeepsLease(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d1 := openURL(t, u, transport.Config{})
	d2 := openURL(t, u, transport.Config{})
	s1 := subscribe(t, d1, "h", "a.b", 300*time.Millisecond)
	s2 := subscribe(t, d2, "h", "a.b", 300*time.Millisecond)
	publish(t, d1, msg("a.b"))
	got := receive(t, s1, 1, 2*time.Second)
	stop := make(chan struct{})
	go func() {
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-tk.C:
				if err := s1.Extend(context.Background(), got, 300*time.Millisecond); err != nil {
					t.Error(err)
				}
			case <-stop:
				return
			}
		}
	}()
	receiveNone(t, s2, time.Second)
	close(stop)
	settle(t, s1, transport.Complete, 0, got...)
	if st := stats(t, d1, "h"); st.Completed != 1 {
		t.Fatalf("extended delivery did not complete: %+v", st)
	}
}

func TestDeadLetterQueue(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	ms := []*transport.Message{msg("a.b"), msg("a.b"), msg("a.b")}
	publish(t, d, ms...)
	ds := receive(t, s, 3, 2*time.Second)
	before := time.Now()
	settle(t, s, transport.Dead, 0, ds...)
	dls, err := d.DeadLetters(context.Background(), "h", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 3 {
		t.Fatalf("%d dead letters", len(dls))
	}
	for i, dl := range dls {
		if dl.ID != ms[i].ID || dl.Error != "boom" || dl.Attempts != 1 || dl.Handler != "h" || dl.DeadAt.Before(before.Add(-time.Second)) || dl.FirstAttempt.IsZero() || string(dl.Data) != string(ms[i].Data) {
			t.Fatalf("dead letter %d: %+v", i, dl)
		}
	}
	if st := stats(t, d, "h"); st.Dead != 3 || st.Failed != 3 || st.Active != 0 {
		t.Fatalf("stats %+v", st)
	}
	n, err := d.Requeue(context.Background(), "h", []string{ms[0].ID})
	if err != nil || n != 1 {
		t.Fatalf("Requeue = %d, %v", n, err)
	}
	again := receive(t, s, 1, 2*time.Second)[0]
	if again.ID != ms[0].ID || again.Attempt != 1 {
		t.Fatalf("requeued: %s attempt %d", again.ID, again.Attempt)
	}
	n, err = d.Purge(context.Background(), "h", nil)
	if err != nil || n != 2 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	if _, err := d.DeadLetters(context.Background(), "nope", 10); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("unknown handler: %v", err)
	}
}

func TestDelayedPublish(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	m := msg("a.b")
	m.Delay = 500 * time.Millisecond
	start := time.Now()
	publish(t, d, m)
	if st := stats(t, d, "h"); st.Delayed != 1 || st.Waiting != 0 {
		t.Fatalf("stats %+v", st)
	}
	got := receive(t, s, 1, 3*time.Second)[0]
	if el := time.Since(start); el < 450*time.Millisecond {
		t.Fatalf("delayed event arrived after %v", el)
	}
	if got.ID != m.ID || got.Attempt != 1 {
		t.Fatalf("got %s attempt %d", got.ID, got.Attempt)
	}
}

func TestPublishDedup(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	m := msg("a.b")
	publish(t, d, m)
	publish(t, d, m, m)
	receive(t, s, 1, 2*time.Second)
	receiveNone(t, s, 300*time.Millisecond)

	// An id the core generated takes the direct path, which never resends
	// a command that may have reached Redis, so it needs no dedup record.
	// A delayed event goes through the publish script; with a generated
	// id its record lives only GeneratedIDWindow, with an id the
	// publisher chose, the dedup window.
	ctx := context.Background()
	gen := msg("a.b")
	gen.IDGenerated = true
	publish(t, d, gen)
	receive(t, s, 1, 2*time.Second)
	if n := d.client.Exists(ctx, d.dedupKey("test", gen.ID)).Val(); n != 0 {
		t.Errorf("a generated id published directly left a dedup record")
	}
	late := msg("a.b")
	late.IDGenerated = true
	late.Delay = time.Millisecond
	publish(t, d, late)
	publish(t, d, late)
	receive(t, s, 1, 2*time.Second)
	receiveNone(t, s, 300*time.Millisecond)
	genTTL := d.client.PTTL(ctx, d.dedupKey("test", late.ID)).Val()
	chosenTTL := d.client.PTTL(ctx, d.dedupKey("test", m.ID)).Val()
	if genTTL <= 0 || genTTL > transport.GeneratedIDWindow {
		t.Errorf("generated id's dedup record lives %s, want at most %s", genTTL, transport.GeneratedIDWindow)
	}
	if chosenTTL <= transport.GeneratedIDWindow {
		t.Errorf("chosen id's dedup record lives %s, want the dedup window (default %s)", chosenTTL, transport.DefaultDedupWindow)
	}
}

func TestStatsWaitingAndOldest(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.*", time.Minute)
	publish(t, d, msg("a.b"), msg("a.c"), msg("a.d"))
	time.Sleep(50 * time.Millisecond)
	st := stats(t, d, "h")
	if st.Waiting != 3 || st.Pattern != "a.*" || st.OldestWaiting < 40*time.Millisecond {
		t.Fatalf("stats %+v", st)
	}
	receive(t, s, 2, 2*time.Second)
	st = stats(t, d, "h")
	if st.Waiting != 1 || st.Active != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReplay(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	old := msg("a.b")
	publish(t, d, old)
	settle(t, s, transport.Complete, 0, receive(t, s, 1, 2*time.Second)...)
	time.Sleep(20 * time.Millisecond)
	since := time.Now()
	time.Sleep(5 * time.Millisecond)
	newer := []*transport.Message{msg("a.b"), msg("a.b")}
	publish(t, d, newer...)
	settle(t, s, transport.Complete, 0, receive(t, s, 2, 2*time.Second)...)
	n, err := d.Replay(context.Background(), "h", since)
	if err != nil || n != 2 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	got := receive(t, s, 2, 2*time.Second)
	ids := []string{got[0].ID, got[1].ID}
	sort.Strings(ids)
	want := []string{newer[0].ID, newer[1].ID}
	sort.Strings(want)
	if fmt.Sprint(ids) != fmt.Sprint(want) || got[0].Attempt != 1 {
		t.Fatalf("replayed %v, want %v", ids, want)
	}
	receiveNone(t, s, 200*time.Millisecond)
	// The replayed copies are leased: a replay now leaves them be.
	if n, err := d.Replay(context.Background(), "h", time.Time{}); err != nil || n != 1 {
		t.Fatalf("Replay(all) with two events leased = %d, %v; want 1 (the other event)", n, err)
	}
	settle(t, s, transport.Complete, 0, got...)
	settle(t, s, transport.Complete, 0, receive(t, s, 1, 2*time.Second)...)
	if n, err := d.Replay(context.Background(), "h", time.Time{}); err != nil || n != 3 {
		t.Fatalf("Replay(all) = %d, %v; want 3 (one per event)", n, err)
	}
}

// TestReclaimReachesExpiredLeasesBehindLiveOnes keeps 50 leases alive
// ahead of 5 that expire: the reclaim scans, each looking at a few
// pending entries, must go on from where the last one stopped to reach
// the expired ones.
func TestReclaimReachesExpiredLeasesBehindLiveOnes(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	const lease = 400 * time.Millisecond
	s := subscribe(t, d, "h", "a.b", lease)
	for range 55 {
		publish(t, d, msg("a.b"))
	}
	live := receive(t, s, 50, 2*time.Second)
	expired := map[string]bool{}
	for _, x := range receive(t, s, 5, 2*time.Second) {
		expired[x.ID] = true
	}
	stop := make(chan struct{})
	var extending sync.WaitGroup
	extending.Go(func() {
		tick := time.NewTicker(lease / 4)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if err := s.Extend(context.Background(), live, lease); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	defer func() { close(stop); extending.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for len(expired) > 0 && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		ds, _ := s.Receive(ctx, 1)
		cancel()
		for _, x := range ds {
			if x.Attempt == 2 {
				delete(expired, x.ID)
			}
		}
	}
	if len(expired) > 0 {
		t.Fatalf("%d expired leases behind 50 live ones were not reclaimed within 5s", len(expired))
	}
}

func TestRetentionCompletedAndDead(t *testing.T) {
	t.Parallel()
	d := openURL(t, prefixURL(t), transport.Config{Retention: transport.Retention{CompletedCount: 3, DeadCount: 2}})
	s := subscribe(t, d, "h", "a.b", time.Minute)
	for i := 0; i < 10; i++ {
		publish(t, d, msg("a.b"))
	}
	ds := receive(t, s, 10, 2*time.Second)
	settle(t, s, transport.Complete, 0, ds[:7]...)
	settle(t, s, transport.Dead, 0, ds[7:]...)
	deadline := time.Now().Add(2 * time.Second)
	for {
		st := stats(t, d, "h")
		if st.Completed == 3 && st.Dead == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention: stats %+v, want 3 completed and 2 dead", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Retention never trims work that is not done.
	publish(t, d, msg("a.b"), msg("a.b"), msg("a.b"), msg("a.b"), msg("a.b"))
	ds = receive(t, s, 2, 2*time.Second)
	settle(t, s, transport.Complete, 0, ds...)
	if err := d.acks.flush(context.Background()); err != nil { // completions are acknowledged in the background
		t.Fatal(err)
	}
	if err := d.trim(context.Background(), "h", 0); err != nil {
		t.Fatal(err)
	}
	// The three not yet handled may be waiting or read ahead (active).
	st := stats(t, d, "h")
	if st.Waiting+st.Active != 3 || st.Completed != 3 {
		t.Fatalf("after trim: %+v; want 3 completed and the 3 not handled yet kept", st)
	}
}

// TestRetentionTrimsAsItGoes checks that completions trim the stream by
// themselves: the completed count stays between the limit and the limit
// plus the slack a trim lets pass (and one batch).
func TestRetentionTrimsAsItGoes(t *testing.T) {
	t.Parallel()
	const keep, batch = 40, 10
	d := openURL(t, prefixURL(t), transport.Config{Retention: transport.Retention{CompletedCount: keep}})
	s := subscribe(t, d, "h", "a.b", time.Minute)
	for range 20 {
		for range batch {
			publish(t, d, msg("a.b"))
		}
		settle(t, s, transport.Complete, 0, receive(t, s, batch, 2*time.Second)...)
	}
	if err := d.acks.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	sub := s.(*subscription)
	for deadline := time.Now().Add(2 * time.Second); sub.trimming.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("a retention trim is still running after 2s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := stats(t, d, "h"); st.Completed < keep || st.Completed > keep+sub.slack()+batch {
		t.Fatalf("after 200 completions with a count of %d: %d completed kept, want %d to %d", keep, st.Completed, keep, keep+sub.slack()+batch)
	}
}

// TestRetentionKeepsStuckEntry checks count trimming around an old entry
// still in flight: nothing at or after it is trimmed, and once it
// completes the stream is cut back to the retained count.
func TestRetentionKeepsStuckEntry(t *testing.T) {
	t.Parallel()
	d := openURL(t, prefixURL(t), transport.Config{Retention: transport.Retention{CompletedCount: 3}})
	s := subscribe(t, d, "h", "a.b", time.Minute)
	publish(t, d, msg("a.b"))
	stuck := receive(t, s, 1, 2*time.Second)
	for range 20 {
		publish(t, d, msg("a.b"))
	}
	settle(t, s, transport.Complete, 0, receive(t, s, 20, 2*time.Second)...)
	publish(t, d, msg("a.b"), msg("a.b"))
	if err := d.acks.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.trim(context.Background(), "h", 0); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, d, "h"); st.Active != 1 || st.Completed != 20 || st.Waiting != 2 {
		t.Fatalf("trim with an old entry in flight: %+v; want it active, 20 completed kept, 2 waiting", st)
	}
	settle(t, s, transport.Complete, 0, stuck...)
	if err := d.acks.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.trim(context.Background(), "h", 0); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, d, "h"); st.Active != 0 || st.Completed != 3 || st.Waiting != 2 {
		t.Fatalf("trim after the old entry completed: %+v; want 3 completed and 2 waiting", st)
	}
}

func TestRetentionByAge(t *testing.T) {
	t.Parallel()
	d := openURL(t, prefixURL(t), transport.Config{Retention: transport.Retention{CompletedAge: 100 * time.Millisecond, DeadAge: 100 * time.Millisecond}})
	s := subscribe(t, d, "h", "a.b", time.Minute)
	publish(t, d, msg("a.b"), msg("a.b"))
	ds := receive(t, s, 2, 2*time.Second)
	settle(t, s, transport.Complete, 0, ds[0])
	settle(t, s, transport.Dead, 0, ds[1])
	time.Sleep(250 * time.Millisecond)
	publish(t, d, msg("a.b"))
	if err := d.trim(context.Background(), "h", 0); err != nil {
		t.Fatal(err)
	}
	st := stats(t, d, "h")
	if st.Completed != 0 || st.Dead != 0 || st.Waiting != 1 {
		t.Fatalf("after age trim: %+v", st)
	}
}

func TestClaims(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	ctx := context.Background()
	check := func(want transport.ClaimResult) {
		t.Helper()
		got, err := d.Claim(ctx, "h", "e1", 200*time.Millisecond)
		if err != nil || got != want {
			t.Fatalf("Claim = %v, %v; want %v", got, err, want)
		}
	}
	check(transport.Claimed)
	check(transport.Busy)
	if err := d.Finish(ctx, "h", "e1", false); err != nil {
		t.Fatal(err)
	}
	check(transport.Claimed)
	time.Sleep(250 * time.Millisecond) // the claim's lease runs out
	check(transport.Claimed)
	if err := d.Finish(ctx, "h", "e1", true); err != nil {
		t.Fatal(err)
	}
	check(transport.Done)
	// Concurrent claims: exactly one wins.
	var wins sync.WaitGroup
	var mu sync.Mutex
	claimed := 0
	for i := 0; i < 20; i++ {
		wins.Add(1)
		go func() {
			defer wins.Done()
			r, err := d.Claim(ctx, "h", "e2", time.Minute)
			if err != nil {
				t.Error(err)
			}
			if r == transport.Claimed {
				mu.Lock()
				claimed++
				mu.Unlock()
			}
		}()
	}
	wins.Wait()
	if claimed != 1 {
		t.Fatalf("%d concurrent claims won, want 1", claimed)
	}
}

func TestSharedRateLimit(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d1 := openURL(t, u, transport.Config{})
	d2 := openURL(t, u, transport.Config{})
	ctx := context.Background()
	// 5 per second shared by two processes: the first 5 start at once,
	// the next 3 a second after the first ones, whichever process asks.
	var waits []time.Duration
	for i := 0; i < 8; i++ {
		d := d1
		if i%2 == 1 {
			d = d2
		}
		w, err := d.Reserve(ctx, "h", 5, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	for i, w := range waits {
		var want time.Duration
		if i >= 5 {
			want = time.Second
		}
		// Generous bounds: the reservations are taken one after another,
		// so the later ones wait a little less than a second.
		if w > want || i >= 5 && w < want-900*time.Millisecond {
			t.Fatalf("reservation %d waits %v, want about %v (all: %v)", i, w, want, waits)
		}
	}
}

// TestRateLimitSlidingWindow checks the bound RateLimit states: at most n
// starts in ANY interval of length per, across processes. A token bucket
// with a burst of n lets 2n start within one period.
func TestRateLimitSlidingWindow(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	drivers := []*Driver{openURL(t, u, transport.Config{}), openURL(t, u, transport.Config{})}
	ctx := context.Background()
	const n, per, total = 20, time.Second, 60
	var mu sync.Mutex
	var starts []time.Time
	var wg sync.WaitGroup
	for i := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := drivers[i%2].Reserve(ctx, "h", n, per)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			starts = append(starts, time.Now().Add(w))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(starts) != total {
		t.Fatalf("%d reservations, want %d", len(starts), total)
	}
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	// The starts as the processes compute them carry a round trip's
	// jitter each; an interval a little shorter than per must hold at
	// most n of them, where a token bucket puts 2n-1 in one period.
	// Under the race detector on a saturated machine the reply to one
	// reservation can come a few hundred milliseconds after another's.
	jitter := 400 * time.Millisecond
	for i := 0; i+n < len(starts); i++ {
		if gap := starts[i+n].Sub(starts[i]); gap < per-jitter {
			t.Fatalf("starts %d to %d (%d starts) lie within %v, want at most %d in any %v", i, i+n, n+1, gap, n, per)
		}
	}
	// On the server's clock the bound is exact.
	scores := drivers[0].client.ZRangeWithScores(ctx, drivers[0].rateKey("h"), 0, -1).Val()
	for i := 0; i+n < len(scores); i++ {
		if gap := time.Duration(scores[i+n].Score-scores[i].Score) * time.Microsecond; gap < per {
			t.Fatalf("reserved starts %d to %d lie within %v on the server's clock, want at most %d in any %v", i, i+n, gap, n, per)
		}
	}
	fullest := 0
	for i := range starts {
		j := i
		for j < len(starts) && starts[j].Sub(starts[i]) < per-jitter {
			j++
		}
		fullest = max(fullest, j-i)
	}
	t.Logf("%d starts over %v; the fullest %v window holds %d (process clocks)", total, starts[len(starts)-1].Sub(starts[0]), per-jitter, fullest)
	if last := starts[len(starts)-1].Sub(starts[0]); last < 2*per-jitter {
		t.Fatalf("%d starts spread over %v, want about %v", total, last, 2*per)
	}
}

func TestForeignEntriesAreDeadLettered(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	c := rawClient(t, d)
	if err := c.XAdd(context.Background(), &goredis.XAddArgs{Stream: d.streamKey("h"), Values: []any{"foo", "bar"}}).Err(); err != nil {
		t.Fatal(err)
	}
	m := msg("a.b")
	publish(t, d, m)
	got := receive(t, s, 1, 2*time.Second)
	if got[0].ID != m.ID {
		t.Fatalf("got %s, want the Ripple event", got[0].ID)
	}
	dls, err := d.DeadLetters(context.Background(), "h", 10)
	if err != nil || len(dls) != 1 || !strings.Contains(dls[0].Error, "not a Ripple event") {
		t.Fatalf("foreign entry not dead-lettered: %+v %v", dls, err)
	}
}

// TestNegativeAttemptsFieldIsClamped writes by hand an entry whose
// attempts field is below 0: its first delivery must still be attempt 1,
// or it would run forever short of MaxAttempts.
func TestNegativeAttemptsFieldIsClamped(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	err := rawClient(t, d).XAdd(context.Background(), &goredis.XAddArgs{Stream: d.streamKey("h"),
		Values: []any{"id", "hand-1", "type", "a.b", "time", time.Now().UTC().Format(time.RFC3339Nano), "a", "-99", "data", "{}"}}).Err()
	if err != nil {
		t.Fatal(err)
	}
	if got := receive(t, s, 1, 2*time.Second); got[0].ID != "hand-1" || got[0].Attempt != 1 {
		t.Fatalf("got %s at attempt %d, want hand-1 at attempt 1", got[0].ID, got[0].Attempt)
	}
}

func TestEntriesTrimmedWhilePendingAreNotLoopedOn(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", 100*time.Millisecond)
	publish(t, d, msg("a.b"))
	got := receive(t, s, 1, 2*time.Second)
	c := rawClient(t, d)
	if err := c.XTrimMaxLen(context.Background(), d.streamKey("h"), 0).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	receiveNone(t, s, 500*time.Millisecond) // XAUTOCLAIM reports it deleted; it is dropped
	if n, err := c.XPending(context.Background(), d.streamKey("h"), "h").Result(); err != nil || n.Count != 0 {
		t.Fatalf("pending after trim: %+v %v", n, err)
	}
	settle(t, s, transport.Retry, 0, got...) // lost lease: ignored, no error
}

func TestGroupRecreatedAfterDataLoss(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	c := rawClient(t, d)
	ctx := context.Background()
	// Wipe every key of the prefix, as a restart without persistence would.
	iter := c.Scan(ctx, 0, d.prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		c.Del(ctx, iter.Val())
	}
	// The receiver re-registers the subscription and recreates its group.
	receiveNone(t, s, 300*time.Millisecond)
	m := msg("a.b")
	publish(t, d, m)
	if got := receive(t, s, 1, 2*time.Second); got[0].ID != m.ID {
		t.Fatalf("got %s", got[0].ID)
	}
}

func TestReceiveHonoursCancel(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	// A read that is not ended by the cancellation runs to its block time
	// (maxBlock, 250ms), 150ms or more after the cancel below. The best of
	// several tries tells the two apart on a busy machine too.
	best := time.Hour
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := s.Receive(ctx, 1); done <- err }()
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Receive after cancel: %v", err)
			}
			best = min(best, time.Since(start))
		case <-time.After(2 * time.Second):
			t.Fatal("Receive ignored cancellation")
		}
		if best < 100*time.Millisecond {
			break
		}
	}
	if best >= 100*time.Millisecond {
		t.Fatalf("Receive took at best %v to notice cancellation", best)
	}
	// The subscription still works afterwards.
	publish(t, d, msg("a.b"))
	receive(t, s, 1, 2*time.Second)
}

func TestAs(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	var c *goredis.Client
	var u goredis.UniversalClient
	if !d.As(&c) || c == nil || !d.As(&u) || u == nil {
		t.Fatal("As did not expose the go-redis client")
	}
	var s string
	if d.As(&s) {
		t.Fatal("As(*string) = true")
	}
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestRetentionAgeLongerThanTheEpoch checks that an age reaching back
// before 1970, a natural way to say "by count only", still trims by count
// instead of failing every trim.
func TestRetentionAgeLongerThanTheEpoch(t *testing.T) {
	t.Parallel()
	forever := time.Duration(math.MaxInt64)
	d := openURL(t, prefixURL(t), transport.Config{Retention: transport.Retention{
		CompletedCount: 3, CompletedAge: forever, DeadCount: 2, DeadAge: forever}})
	s := subscribe(t, d, "h", "a.b", time.Minute)
	for range 10 {
		publish(t, d, msg("a.b"))
	}
	settle(t, s, transport.Complete, 0, receive(t, s, 10, 2*time.Second)...)
	if err := d.acks.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.trim(context.Background(), "h", 0); err != nil {
		t.Fatalf("trim with an age longer than the epoch: %v", err)
	}
	if st := stats(t, d, "h"); st.Completed != 3 {
		t.Fatalf("completed kept = %d, want 3 (the count)", st.Completed)
	}
}

// TestUnsubscribeStartsEmpty checks that a handler subscribed again after
// Unsubscribe starts with no history, its failure count included.
func TestUnsubscribeStartsEmpty(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	ctx := context.Background()
	s := subscribe(t, d, "h", "a.b", time.Minute)
	publish(t, d, msg("a.b"), msg("a.b"))
	ds := receive(t, s, 2, 2*time.Second)
	settle(t, s, transport.Retry, time.Hour, ds[0])
	settle(t, s, transport.Dead, 0, ds[1])
	if st := stats(t, d, "h"); st.Failed != 2 || st.Dead != 1 || st.Delayed != 1 {
		t.Fatalf("before Unsubscribe: %+v", st)
	}
	s.Close()
	if err := d.Unsubscribe(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	subscribe(t, d, "h", "a.b", time.Minute)
	if st := stats(t, d, "h"); st != (transport.Stats{Handler: st.Handler, Pattern: st.Pattern}) {
		t.Fatalf("subscribed again after Unsubscribe: %+v, want all counts zero", st)
	}
}

// TestFailedSettleKeepsTheEntry checks that a retry or dead-letter
// settlement whose write fails (here a key of the wrong type in the
// namespace) leaves the entry pending, to be delivered again, instead of
// deleting it first.
func TestFailedSettleKeepsTheEntry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, c := range []struct {
		outcome transport.Outcome
		delay   time.Duration
		key     string // PREFIX + key is made a string
	}{
		{transport.Retry, time.Hour, ":d:h"},
		{transport.Dead, 0, ":x:h"},
	} {
		d := openTest(t)
		s := subscribe(t, d, "h", "a.b", time.Minute)
		publish(t, d, msg("a.b"))
		got := receive(t, s, 1, 2*time.Second)[0]
		raw := rawClient(t, d)
		if err := raw.Set(ctx, d.prefix+c.key, "not Ripple's", 0).Err(); err != nil {
			t.Fatal(err)
		}
		err := s.Settle(ctx, []transport.Settlement{{Delivery: got, Outcome: c.outcome, Delay: c.delay, Error: "boom"}})
		if err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Fatalf("%v: Settle = %v, want Redis's WRONGTYPE error", c.outcome, err)
		}
		pe, err := raw.XPending(ctx, d.streamKey("h"), "h").Result()
		if err != nil {
			t.Fatal(err)
		}
		if n := raw.XLen(ctx, d.streamKey("h")).Val(); pe.Count != 1 || n != 1 {
			t.Fatalf("%v: after the failed settle the stream holds %d entries, %d pending; want the entry still there and pending", c.outcome, n, pe.Count)
		}
	}
}

// TestFailedPublishLeavesNoDedupRecord checks that a publish with an id of
// its own whose write fails can be retried: no dedup record is left behind
// to swallow the retry.
func TestFailedPublishLeavesNoDedupRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	subscribe(t, d, "h", "a.b", time.Minute)
	raw := rawClient(t, d)
	if err := raw.Set(ctx, d.prefix+":d:h", "not Ripple's", 0).Err(); err != nil {
		t.Fatal(err)
	}
	m := msg("a.b")
	m.Delay = time.Hour
	if err := d.Publish(ctx, []*transport.Message{m}); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("Publish = %v, want Redis's WRONGTYPE error", err)
	}
	raw.Del(ctx, d.prefix+":d:h")
	publish(t, d, m)
	if n := raw.ZCard(ctx, d.prefix+":d:h").Val(); n != 1 {
		t.Fatalf("the retried publish stored %d delayed entries, want 1", n)
	}
}

// TestReplayLeavesDelayedEvents checks that an event waiting in the
// delayed set gets no copy from Replay, though its completed entry is
// still in the stream: here a replayed copy that failed and waits for its
// retry. It is delivered when due anyway.
func TestReplayLeavesDelayedEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	m := msg("a.b")
	publish(t, d, m)
	settle(t, s, transport.Complete, 0, receive(t, s, 1, 2*time.Second)...)
	if n, err := d.Replay(ctx, "h", time.Time{}); err != nil || n != 1 {
		t.Fatalf("first Replay = %d, %v; want 1", n, err)
	}
	settle(t, s, transport.Retry, time.Hour, receive(t, s, 1, 2*time.Second)...)
	if n, err := d.Replay(ctx, "h", time.Time{}); err != nil || n != 0 {
		t.Fatalf("Replay with the event's retry delayed = %d, %v; want 0", n, err)
	}
	receiveNone(t, s, 200*time.Millisecond)
}

// TestReplayWhileARetryFallsDue checks that a retry falling due while
// Replay scans the stream (it moves from the delayed set to the stream in
// between) gets no copy: the event is delivered once.
func TestReplayWhileARetryFallsDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := prefixURL(t)
	d := openURL(t, u, transport.Config{Retention: transport.Retention{CompletedCount: 1 << 30}})
	s := subscribe(t, d, "h", "a.b", time.Minute)
	raw := rawClient(t, d)
	stream := d.streamKey("h")

	m := msg("a.b")
	publish(t, d, m)
	settle(t, s, transport.Complete, 0, receive(t, s, 1, 2*time.Second)...)
	if n, err := d.Replay(ctx, "h", time.Time{}); err != nil || n != 1 {
		t.Fatalf("first Replay = %d, %v", n, err)
	}
	copy1 := receive(t, s, 1, 2*time.Second)

	// Handled history in the stream, so that a Replay takes a while.
	for range 100 {
		pipe := raw.Pipeline()
		for range 500 {
			pipe.XAdd(ctx, &goredis.XAddArgs{Stream: stream, Values: []any{"id", randHex(8), "type", "z.z", "data", "{}"}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := raw.XGroupSetID(ctx, stream, "h", "$").Err(); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if _, err := d.unfinished(ctx, "h", stream, "-"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)

	// The replayed copy fails; its retry falls due halfway through the
	// next Replay, and a receiver of another process takes it.
	settle(t, s, transport.Retry, took/2, copy1...)
	other := subscribe(t, openURL(t, u, transport.Config{}), "h", "a.b", time.Minute)
	got := make(chan int)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 3*took+time.Second)
		defer cancel()
		n := 0
		for rctx.Err() == nil {
			ds, _ := other.Receive(rctx, 10)
			for _, x := range ds {
				if x.ID == m.ID {
					n++
				}
			}
		}
		got <- n
	}()
	if _, err := d.Replay(ctx, "h", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != 1 {
		t.Fatalf("the event whose retry fell due during Replay was delivered %d times, want 1", n)
	}
}

// TestStatsCountDueDelayedAsWaiting checks that a delayed event that is
// already due counts as waiting, as on sqlite, though it moves to the
// stream only at the next receive: with no handler running, it would
// otherwise stay "delayed" and out of the oldest-waiting age.
func TestStatsCountDueDelayedAsWaiting(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	subscribe(t, d, "h", "a.b", time.Minute)
	soon, later := msg("a.b"), msg("a.b")
	soon.Delay, later.Delay = 50*time.Millisecond, time.Hour
	publish(t, d, soon, later)
	time.Sleep(200 * time.Millisecond)
	st := stats(t, d, "h")
	if st.Waiting != 1 || st.Delayed != 1 || st.OldestWaiting < 100*time.Millisecond {
		t.Fatalf("stats %+v; want 1 waiting (the due one, waiting about 150ms) and 1 delayed", st)
	}
}

// TestReplayDeadLettersWithEmptyStream checks that Replay delivers dead
// letters again when the handler's stream holds nothing (every event was
// dead-lettered, and dead-lettering deletes the stream entry).
func TestReplayDeadLettersWithEmptyStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	m := msg("a.b")
	publish(t, d, m)
	settle(t, s, transport.Dead, 0, receive(t, s, 1, 2*time.Second)...)
	if n, err := d.Replay(ctx, "h", time.Time{}); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1, the dead letter", n, err)
	}
	if got := receive(t, s, 1, 2*time.Second); got[0].ID != m.ID {
		t.Fatalf("received %s, want %s", got[0].ID, m.ID)
	}
}

// TestReplayChoosesByPublishTime checks that Replay goes by when an event
// was published, not when its entry entered the stream (a retry enters
// later), and that an event in the dead-letter queue is never also copied
// from a completed entry.
func TestReplayChoosesByPublishTime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openURL(t, prefixURL(t), transport.Config{Retention: transport.Retention{CompletedCount: 1 << 30}})
	s := subscribe(t, d, "h", "a.b", time.Minute)
	m := msg("a.b")
	publish(t, d, m)
	settle(t, s, transport.Retry, 300*time.Millisecond, receive(t, s, 1, 2*time.Second)...)
	time.Sleep(100 * time.Millisecond)
	since := time.Now() // after the publish, before the retry
	settle(t, s, transport.Complete, 0, receive(t, s, 1, 3*time.Second)...)
	if n, err := d.Replay(ctx, "h", since); err != nil || n != 0 {
		t.Fatalf("Replay(since after the publish) = %d, %v; want 0", n, err)
	}
	// A copy, replayed from the start, dies: the event is then both a
	// completed entry and a dead letter.
	if n, err := d.Replay(ctx, "h", time.Time{}); err != nil || n != 1 {
		t.Fatalf("Replay(all) = %d, %v; want 1", n, err)
	}
	settle(t, s, transport.Dead, 0, receive(t, s, 1, 2*time.Second)...)
	if n, err := d.Replay(ctx, "h", time.Time{}); err != nil || n != 1 {
		t.Fatalf("Replay(all) with the event dead = %d, %v; want 1 (the dead letter alone)", n, err)
	}
	if dl, err := d.DeadLetters(ctx, "h", 10); err != nil || len(dl) != 0 {
		t.Fatalf("dead letters after the replay: %d, %v; want none", len(dl), err)
	}
	receive(t, s, 1, 2*time.Second)
	receiveNone(t, s, 200*time.Millisecond)
}

// TestReplayDeadLetterWithoutTime checks that a dead letter of an entry
// without a time field (written by something other than Ripple) is
// replayed too.
func TestReplayDeadLetterWithoutTime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	s := subscribe(t, d, "h", "a.b", time.Minute)
	if err := rawClient(t, d).XAdd(ctx, &goredis.XAddArgs{Stream: d.streamKey("h"),
		Values: []any{"id", "no-time", "type", "a.b", "data", "{}"}}).Err(); err != nil {
		t.Fatal(err)
	}
	settle(t, s, transport.Dead, 0, receive(t, s, 1, 2*time.Second)...)
	if n, err := d.Replay(ctx, "h", time.Time{}); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1", n, err)
	}
	if dl, _ := d.DeadLetters(ctx, "h", 10); len(dl) != 0 {
		t.Fatalf("%d dead letters left, want none", len(dl))
	}
}

// TestMixedLeasesDoNotSteal runs two processes of one handler with
// different leases, as during a deploy that changes Lease: the one with
// the short lease must not take an entry the other still holds under its
// longer, renewed lease.
func TestMixedLeasesDoNotSteal(t *testing.T) {
	u := prefixURL(t)
	dA, dB := openURL(t, u, transport.Config{}), openURL(t, u, transport.Config{})
	a := subscribe(t, dA, "h", "a.b", time.Minute)
	b := subscribe(t, dB, "h", "a.b", 200*time.Millisecond)
	publish(t, dA, msg("a.b"))
	got := receive(t, a, 1, 2*time.Second)
	time.Sleep(300 * time.Millisecond)
	if err := a.Extend(context.Background(), got, time.Minute); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	receiveNone(t, b, time.Second)
}

// TestCrashedLongLeaseReclaimed checks the other side of mixed leases: an
// entry held by a receiver that stopped (a crash) is reclaimed once its
// own lease has run out, and the stopped receiver's lease entry is
// dropped a second after that, so it no longer holds back reclaiming,
// along with its consumer in the group.
func TestCrashedLongLeaseReclaimed(t *testing.T) {
	u := prefixURL(t)
	dA, dB := openURL(t, u, transport.Config{}), openURL(t, u, transport.Config{})
	a := subscribe(t, dA, "h", "a.b", 400*time.Millisecond)
	b := subscribe(t, dB, "h", "a.b", 100*time.Millisecond)
	m := msg("a.b")
	publish(t, dA, m)
	held := receive(t, a, 1, 2*time.Second)
	began := time.Now()
	// a never settles nor renews: its process died.
	ds := receive(t, b, 1, 3*time.Second)
	if ds[0].ID != m.ID || ds[0].Attempt != 2 {
		t.Fatalf("got %s attempt %d, want %s attempt 2", ds[0].ID, ds[0].Attempt, m.ID)
	}
	if waited := time.Since(began); waited < 400*time.Millisecond-50*time.Millisecond {
		t.Errorf("entry taken %v after it was leased, before its holder's 400ms lease ran out", waited)
	}
	settle(t, b, transport.Complete, 0, ds...)
	_ = held

	raw := rawClient(t, dA)
	key := dA.leasesKey("h")
	if n := raw.HLen(context.Background(), key).Val(); n != 2 {
		t.Fatalf("%s has %d receivers, want both", key, n)
	}
	time.Sleep(1500 * time.Millisecond)
	receiveNone(t, b, 300*time.Millisecond) // b's receive drops a's stale entry
	if n := raw.HLen(context.Background(), key).Val(); n != 1 {
		t.Errorf("%s has %d receivers after the stopped one's entry went stale, want 1", key, n)
	}
	if cs, err := raw.XInfoConsumers(context.Background(), dA.streamKey("h"), "h").Result(); err != nil || len(cs) != 1 {
		t.Errorf("XINFO CONSUMERS = %+v, %v; want only the live receiver's consumer", cs, err)
	}
}

// unknownLag leaves the group of handler name with an unknown lag, as
// Redis does once the newest delivered entry is deleted: of two events
// delivered, the first is completed and the second retried an hour later.
// done events are delivered and completed before that.
func unknownLag(t *testing.T, d *Driver, name, typ string, done int) transport.Subscription {
	t.Helper()
	s := subscribe(t, d, name, typ, time.Minute)
	for done > 0 {
		n := min(done, 500)
		ms := make([]*transport.Message, n)
		for i := range ms {
			ms[i] = msg(typ)
		}
		publish(t, d, ms...)
		settle(t, s, transport.Complete, 0, receive(t, s, n, 5*time.Second)...)
		done -= n
	}
	publish(t, d, msg(typ), msg(typ))
	ds := receive(t, s, 2, 2*time.Second)
	settle(t, s, transport.Complete, 0, ds[0])
	settle(t, s, transport.Retry, time.Hour, ds[1])
	return s
}

// wantUnknownLag fails unless Redis reports name's lag as unknown.
func wantUnknownLag(t *testing.T, d *Driver, name string) {
	t.Helper()
	if g, err := rawClient(t, d).XInfoGroups(context.Background(), d.streamKey(name)).Result(); err != nil || len(g) != 1 || g[0].Lag != -1 {
		t.Fatalf("XINFO GROUPS = %+v, %v; want one group with an unknown lag", g, err)
	}
}

// publishMany publishes n events of type typ in batches.
func publishMany(t *testing.T, d *Driver, typ string, n int) {
	t.Helper()
	for n > 0 {
		ms := make([]*transport.Message, min(n, 1000))
		for i := range ms {
			ms[i] = msg(typ)
			ms[i].IDGenerated = true
		}
		publish(t, d, ms...)
		n -= len(ms)
	}
}

// TestStatsWithUnknownLag checks the waiting count while Redis does not
// know the group's lag, whichever side of the last delivered entry is
// shorter, and that Stats does not read the whole backlog then: a stats
// call on a backlog of 50,000 costs about what one on 1,000 does.
func TestStatsWithUnknownLag(t *testing.T) {
	t.Parallel()
	// One namespace each, as Stats reports every handler of its
	// namespace.
	ds := map[string]*Driver{}
	for _, c := range []struct {
		name          string
		done, backlog int
	}{{"few", 1500, 10}, {"small", 0, 1000}, {"big", 0, 50_000}} {
		d := openURL(t, prefixURL(t), transport.Config{Retention: transport.Retention{CompletedCount: 1 << 30}})
		unknownLag(t, d, c.name, c.name+".x", c.done)
		publishMany(t, d, c.name+".x", c.backlog)
		wantUnknownLag(t, d, c.name)
		if st := stats(t, d, c.name); st.Waiting != int64(c.backlog) || st.Delayed != 1 {
			t.Errorf("%s: stats %+v; want %d waiting and 1 delayed", c.name, st, c.backlog)
		}
		ds[c.name] = d
	}
	// The fastest of several calls, so that a pause of the machine does
	// not decide the ratio.
	fastest := func(name string) time.Duration {
		best := time.Hour
		for range 5 {
			began := time.Now()
			stats(t, ds[name], name)
			best = min(best, time.Since(began))
		}
		return best
	}
	small, big := fastest("small"), fastest("big")
	t.Logf("stats: %v with 1,000 waiting, %v with 50,000", small, big)
	if big > 10*small {
		t.Errorf("stats took %v with 50,000 events waiting and %v with 1,000: it reads the backlog", big, small)
	}
}

// TestClosedReceiverLeavesNoLeaseEntry closes every receiver of a handler:
// none leaves its lease entry behind, as no live receiver would be left to
// clear a stale one.
func TestClosedReceiverLeavesNoLeaseEntry(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	for range 3 {
		s := subscribe(t, d, "h", "a.b", time.Minute)
		receiveNone(t, s, 50*time.Millisecond)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if n := rawClient(t, d).HLen(context.Background(), d.leasesKey("h")).Val(); n != 0 {
		t.Errorf("%d lease entries left after every receiver closed, want 0", n)
	}
}
