package postgres

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ripplehq/ripple/transport"
)

func openDriver(t testing.TB, url string) *driver {
	t.Helper()
	d, err := Open(bg, url, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d.(*driver)
}

func TestRefusesNewerSchema(t *testing.T) {
	schema := freshSchema(t)
	url := withParam(serverURL(t), "schema", schema)
	d := openDriver(t, url)
	if _, err := d.pool.Exec(bg, d.q(`UPDATE @.meta SET value = 99 WHERE key = 'schema_version'`)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(bg, url, transport.Config{})
	want := fmt.Sprintf("at version 99, written by a newer Ripple; this build knows versions up to %d", schemaVersion)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open of a schema at version 99 = %v; want an error containing %q", err, want)
	}
}

func TestRefusesForeignSchema(t *testing.T) {
	schema := freshSchema(t)
	c := rawConn(t)
	if _, err := c.Exec(bg, "CREATE SCHEMA "+schema+"; CREATE TABLE "+schema+".orders (id int)"); err != nil {
		t.Fatal(err)
	}
	_, err := Open(bg, withParam(serverURL(t), "schema", schema), transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "not a Ripple schema") || !strings.Contains(err.Error(), "orders") {
		t.Fatalf("Open of a schema holding another application's table = %v; want a refusal naming the table", err)
	}
	var n int
	if err := c.QueryRow(bg, "SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the foreign schema was changed: %d tables (%v)", n, err)
	}
}

func TestBadURL(t *testing.T) {
	for _, u := range []string{
		serverURL(t) + "&schema=Bad-Name",
		serverURL(t) + "&schema=1abc",
	} {
		if _, err := Open(bg, u, transport.Config{}); err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("Open(%s) = %v; want an error about the schema name", u, err)
		}
	}
}

// Concurrent Opens of a new schema migrate it once, without errors.
func TestConcurrentMigration(t *testing.T) {
	url := schemaURL(t)
	errs := make(chan error, 6)
	for range 6 {
		go func() {
			d, err := Open(bg, url, transport.Config{})
			if err == nil {
				err = d.Close()
			}
			errs <- err
		}()
	}
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func msg(id, source, typ string) *transport.Message {
	return &transport.Message{ID: id, Type: typ, Time: time.Now(), Attrs: map[string]string{"source": source}, Data: []byte(`"` + source + `"`)}
}

func TestDedupBySourceAndID(t *testing.T) {
	d := openDriver(t, schemaURL(t))
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "s", Pattern: "a.b"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	first := msg("id1", "src1", "a.b")
	if err := d.Publish(bg, []*transport.Message{first}); err != nil || first.Duplicate != nil {
		t.Fatalf("first publish: %v, duplicate %v", err, first.Duplicate)
	}
	again := msg("id1", "src1", "a.b")
	again.Data = []byte(`"changed"`)
	other := msg("id1", "src2", "a.b")
	inBatch := msg("id2", "src1", "a.b")
	inBatch2 := msg("id2", "src1", "a.b")
	if err := d.Publish(bg, []*transport.Message{again, other, inBatch, inBatch2}); err != nil {
		t.Fatal(err)
	}
	if again.Duplicate == nil || string(again.Duplicate.Data) != `"src1"` || again.Duplicate.Attrs["source"] != "src1" {
		t.Fatalf("republished (source, id): Duplicate = %+v; want the first stored message", again.Duplicate)
	}
	if other.Duplicate != nil {
		t.Fatal("the same id under another source was reported as a duplicate")
	}
	if inBatch.Duplicate != nil || inBatch2.Duplicate == nil {
		t.Fatalf("a pair repeated within one publish: first dup %v, second dup %v; want the second only", inBatch.Duplicate, inBatch2.Duplicate)
	}
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	var got []string
	for len(got) < 3 {
		ds, err := sub.Receive(ctx, 10)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		for _, dl := range ds {
			got = append(got, dl.Source()+"/"+dl.ID)
		}
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "src1/id1 src1/id2 src2/id1" {
		t.Fatalf("delivered %v; want each (source, id) once", got)
	}
}

func TestPauseResume(t *testing.T) {
	url := schemaURL(t)
	d1, d2 := openDriver(t, url), openDriver(t, url)
	sub, err := d1.Subscribe(bg, transport.SubscriptionSpec{Name: "p", Pattern: "a.>"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := d2.Pause(bg, "p"); err != nil {
		t.Fatal(err)
	}
	if err := d2.Pause(bg, "p"); err != nil {
		t.Fatalf("pausing a paused handler: %v", err)
	}
	if err := d2.Pause(bg, "nope"); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("Pause of an unknown handler = %v; want ErrNotFound", err)
	}
	if err := d2.Publish(bg, []*transport.Message{msg("m1", "s", "a.b")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 1500*time.Millisecond)
	ds, err := sub.Receive(ctx, 1)
	cancel()
	if len(ds) != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive while paused = %d deliveries, %v; want none", len(ds), err)
	}
	st, err := d1.Stats(bg)
	if err != nil || len(st) != 1 || !st[0].Paused || st[0].Waiting != 1 {
		t.Fatalf("Stats while paused = %+v, %v; want paused with 1 waiting", st, err)
	}
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(bg, 20*time.Second)
		defer cancel()
		ds, err := sub.Receive(ctx, 1)
		if err == nil && len(ds) != 1 {
			err = fmt.Errorf("%d deliveries", len(ds))
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if err := d2.Resume(bg, "p"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Receive after Resume: %v", err)
	}
}

func TestEphemeral(t *testing.T) {
	url := schemaURL(t)
	d := openDriver(t, url)
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail.x", Pattern: "a.b", Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Publish(bg, []*transport.Message{msg("e1", "s", "a.b")}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	var subs, dels int
	if err := d.pool.QueryRow(bg, d.q(`SELECT (SELECT count(*) FROM @.subscriptions), (SELECT count(*) FROM @.deliveries)`)).Scan(&subs, &dels); err != nil {
		t.Fatal(err)
	}
	if subs != 0 || dels != 0 {
		t.Fatalf("after the last receiver closed: %d subscriptions and %d deliveries left; want none", subs, dels)
	}

	// A receiver that stops touching (its process killed) is reaped.
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail.y", Pattern: "a.b", Ephemeral: true, Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.pool.Exec(bg, d.q(`UPDATE @.subscriptions SET touched_at = touched_at - 10000000000`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the abandoned ephemeral subscription to be reaped", func() bool {
		var n int
		_ = d.pool.QueryRow(bg, d.q(`SELECT count(*) FROM @.subscriptions`)).Scan(&n)
		return n == 0
	})
}

func TestStartFrom(t *testing.T) {
	d := openDriver(t, schemaURL(t))
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "keep", Pattern: "a.b"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Publish(bg, []*transport.Message{msg("old", "s", "a.b")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	mid := time.Now()
	time.Sleep(50 * time.Millisecond)
	if err := d.Publish(bg, []*transport.Message{msg("new", "s", "a.b"), msg("other", "s", "c.d")}); err != nil {
		t.Fatal(err)
	}
	recv := func(spec transport.SubscriptionSpec, want int) []string {
		sub, err := d.Subscribe(bg, spec)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		var ids []string
		ctx, cancel := context.WithTimeout(bg, 2*time.Second)
		defer cancel()
		for {
			ds, err := sub.Receive(ctx, 10)
			if err != nil {
				break
			}
			for _, dl := range ds {
				ids = append(ids, dl.ID)
			}
			if len(ids) >= want {
				break
			}
		}
		return ids
	}
	if got := recv(transport.SubscriptionSpec{Name: "all", Pattern: "a.b", From: transport.Beginning}, 2); strings.Join(got, ",") != "old,new" {
		t.Fatalf("From Beginning got %v; want old,new", got)
	}
	if got := recv(transport.SubscriptionSpec{Name: "mid", Pattern: "a.b", From: mid}, 1); strings.Join(got, ",") != "new" {
		t.Fatalf("From mid got %v; want new", got)
	}
	if got := recv(transport.SubscriptionSpec{Name: "now", Pattern: "a.b"}, 1); len(got) != 0 {
		t.Fatalf("a new subscription without From got %v; want nothing", got)
	}
}

// The shared rate limit is a sliding window over every process: no window
// of length per holds more than n starts.
func TestRateLimitSlidingWindow(t *testing.T) {
	url := schemaURL(t)
	ds := []*driver{openDriver(t, url), openDriver(t, url)}
	const n, per = 5, 400 * time.Millisecond
	var starts []time.Time
	for i := range 4 * n {
		before := time.Now()
		wait, err := ds[i%2].Reserve(bg, "h", n, per)
		if err != nil {
			t.Fatal(err)
		}
		starts = append(starts, before.Add(wait))
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	for i := n; i < len(starts); i++ {
		// Times come from two clocks read at different moments; allow a
		// few milliseconds.
		if gap := starts[i].Sub(starts[i-n]); gap < per-20*time.Millisecond {
			t.Fatalf("starts %d and %d are %v apart; want at least %v (at most %d per window)", i-n, i, gap, per, n)
		}
	}
}

// A pool whose connections are all taken makes Publish wait within its
// context and fail with an error that says so.
func TestPoolExhausted(t *testing.T) {
	d := openDriver(t, withParam(schemaURL(t), "pool_max_conns", "2"))
	var held []interface{ Release() }
	for range 2 {
		c, err := d.pool.Acquire(bg)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := d.Publish(ctx, []*transport.Message{msg("x", "s", "a.b")})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pool") {
		t.Fatalf("Publish with the pool exhausted = %v; want a deadline error naming the pool", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("Publish took %v to give up; want about its context's 300ms", el)
	}
	for _, c := range held {
		c.Release()
	}
	if err := d.Publish(bg, []*transport.Message{msg("y", "s", "a.b")}); err != nil {
		t.Fatalf("Publish after the pool freed up: %v", err)
	}
}

// A statement timeout set through the URL applies to Ripple's statements:
// a publish blocked by a lock fails with PostgreSQL's timeout error rather
// than hanging.
func TestStatementTimeout(t *testing.T) {
	schema := freshSchema(t)
	d := openDriver(t, withParam(withParam(serverURL(t), "schema", schema), "statement_timeout", "300"))
	c := rawConn(t)
	tx, err := c.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(bg) }()
	if _, err := tx.Exec(bg, "LOCK TABLE "+pgx.Identifier{schema, "events"}.Sanitize()+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	err = d.Publish(bg, []*transport.Message{msg("x", "s", "a.b")})
	if err == nil || !strings.Contains(err.Error(), "statement timeout") {
		t.Fatalf("Publish against a locked table with statement_timeout=300 = %v; want the statement timeout", err)
	}
}

// Connections terminated by the server while publishes run (an
// administrator's pg_terminate_backend, a failover): every publish either
// returns nil with its event stored once, or fails (with
// ErrOutcomeUnknown when it may have been stored), and publishing the same
// event again stores it once.
func TestConnectionsTerminated(t *testing.T) {
	app := "ripple_term_" + randHex(4)
	d := openDriver(t, withParam(schemaURL(t), "application_name", app))
	killer := rawConn(t)
	stop := make(chan struct{})
	killed := make(chan int)
	go func() {
		n := 0
		defer func() { killed <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(15 * time.Millisecond):
			}
			var k int
			_ = killer.QueryRow(bg, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&k)
			n += k
		}
	}()
	const total = 150
	unknown, failed := 0, 0
	for i := 0; i < total; i++ {
		retry := false
		for {
			m := msg(fmt.Sprintf("t-%03d", i), "term", "a.b")
			ctx, cancel := context.WithTimeout(bg, 10*time.Second)
			err := d.Publish(ctx, []*transport.Message{m})
			cancel()
			if err == nil {
				if m.Duplicate != nil && !retry {
					t.Fatalf("event %d: first publish reported a duplicate: %+v", i, m.Duplicate)
				}
				break
			}
			if errors.Is(err, transport.ErrOutcomeUnknown) {
				unknown++
			}
			failed++
			if failed > 2000 {
				t.Fatalf("publishes keep failing: %v", err)
			}
			retry = true
		}
	}
	close(stop)
	n := <-killed // the terminator has stopped
	// The check runs on the terminator's own connection: its
	// application_name is not the driver's, so it was never a target,
	// while a pool connection may have been signalled just before the
	// terminator stopped and die under the check (pg_terminate_backend
	// only signals; the backend exits when it next looks).
	var stored, distinct int
	if err := killer.QueryRow(bg, d.q(`SELECT count(*), count(DISTINCT id) FROM @.events WHERE source = 'term'`)).Scan(&stored, &distinct); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections terminated; %d publishes failed (%d with outcome unknown)", n, failed, unknown)
	if stored != total || distinct != total {
		t.Fatalf("%d events stored (%d distinct); want each of the %d once", stored, distinct, total)
	}
	if n == 0 {
		t.Fatal("no connection was terminated: the test tested nothing")
	}
}

// A durable handler's subscription is never taken over by an ephemeral one
// of its name (which would delete it on close), nor a live ephemeral one by
// a durable one; an ephemeral one whose process died gives way.
func TestEphemeralNameConflicts(t *testing.T) {
	d := openDriver(t, schemaURL(t))
	durable, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "orders", Pattern: "a.b"})
	if err != nil {
		t.Fatal(err)
	}
	defer durable.Close()
	_, err = d.Subscribe(bg, transport.SubscriptionSpec{Name: "orders", Pattern: "a.*", Ephemeral: true})
	if err == nil || !strings.Contains(err.Error(), `handler "orders" is durable; give the ephemeral subscription a name of its own`) {
		t.Fatalf("an ephemeral subscription under a durable handler's name: %v; want the refusal", err)
	}
	var pattern string
	var ephemeral bool
	if err := d.pool.QueryRow(bg, d.q(`SELECT pattern, ephemeral FROM @.subscriptions WHERE name = 'orders'`)).Scan(&pattern, &ephemeral); err != nil {
		t.Fatalf("the durable subscription after the refused ephemeral one: %v", err)
	}
	if pattern != "a.b" || ephemeral {
		t.Fatalf("the refused ephemeral subscription changed the durable one: pattern %q ephemeral %v", pattern, ephemeral)
	}
	if err := d.Publish(bg, []*transport.Message{msg("d1", "s", "a.b")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	ds, err := durable.Receive(ctx, 10)
	if err != nil || len(ds) != 1 || ds[0].ID != "d1" {
		t.Fatalf("the durable handler's Receive after the refusal = %v, %v; want d1", ds, err)
	}

	// The converse: a live ephemeral subscription keeps its name.
	tail, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail", Pattern: "a.b", Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail", Pattern: "a.b"})
	if err == nil || !strings.Contains(err.Error(), `handler "tail" is an ephemeral subscription in use`) {
		t.Fatalf("a durable subscription under a live ephemeral one's name: %v; want the refusal", err)
	}
	if err := d.Publish(bg, []*transport.Message{msg("t1", "s", "a.b")}); err != nil {
		t.Fatal(err)
	}
	ds, err = tail.Receive(ctx, 10)
	if err != nil || len(ds) != 1 || ds[0].ID != "t1" {
		t.Fatalf("the ephemeral subscription's Receive after the refusal = %v, %v; want t1", ds, err)
	}
	// Another receiver of the same ephemeral subscription is no conflict.
	tail2, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail", Pattern: "a.b", Ephemeral: true})
	if err != nil {
		t.Fatalf("a second receiver of an ephemeral subscription: %v", err)
	}
	_ = tail2.Close()
	_ = tail.Close()
	var n int
	if err := d.pool.QueryRow(bg, d.q(`SELECT count(*) FROM @.subscriptions WHERE name = 'tail'`)).Scan(&n); err != nil || n != 0 {
		t.Fatalf("ephemeral subscriptions left after its receivers closed: %d, %v", n, err)
	}

	// An ephemeral subscription nobody touches any more (its process
	// died) gives way to a durable one of its name, without its queue.
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "stale", Pattern: "a.b", Ephemeral: true, Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := d.Publish(bg, []*transport.Message{msg("s1", "s", "a.b")}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.pool.Exec(bg, d.q(`UPDATE @.subscriptions SET touched_at = touched_at - 10000000000 WHERE name = 'stale'`)); err != nil {
		t.Fatal(err)
	}
	taken, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "stale", Pattern: "a.b"})
	if err != nil {
		t.Fatalf("a durable subscription under a dead ephemeral one's name: %v", err)
	}
	defer taken.Close()
	if err := d.pool.QueryRow(bg, d.q(`SELECT count(*) FROM @.deliveries d JOIN @.subscriptions s ON s.id = d.sub_id WHERE s.name = 'stale'`)).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the durable subscription inherited %d deliveries of the dead ephemeral one (%v); want none", n, err)
	}
	if err := d.pool.QueryRow(bg, d.q(`SELECT count(*) FROM @.subscriptions WHERE name = 'stale' AND NOT ephemeral`)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("durable subscriptions named stale: %d, %v; want 1", n, err)
	}
}

// Publish times are stored in whole microseconds: Replay and From include
// an event published in the same microsecond just after their bound.
func TestSinceAtStoredPrecision(t *testing.T) {
	d := openDriver(t, schemaURL(t))
	if err := d.Publish(bg, []*transport.Message{msg("p1", "s", "a.b")}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"}); err != nil {
		t.Fatal(err)
	}
	var published int64
	if err := d.pool.QueryRow(bg, d.q(`SELECT published_at FROM @.events WHERE id = 'p1'`)).Scan(&published); err != nil {
		t.Fatal(err)
	}
	if published%1000 != 0 {
		t.Fatalf("published_at %d is not a whole microsecond", published)
	}
	// An event published 500ns after since is stored as since's
	// microsecond, before since itself.
	since := time.Unix(0, published+500)
	n, err := d.Replay(bg, "h", since)
	if err != nil || n != 1 {
		t.Fatalf("Replay(since = stored time + 500ns) = %d, %v; want the event", n, err)
	}
	if n, err := d.Replay(bg, "h", time.Unix(0, published+1000)); err != nil || n != 0 {
		t.Fatalf("Replay(since = the next microsecond) = %d, %v; want nothing", n, err)
	}
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "from", Pattern: "a.b", From: since})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := d.pool.QueryRow(bg, d.q(`SELECT count(*) FROM @.deliveries d JOIN @.subscriptions s ON s.id = d.sub_id WHERE s.name = 'from'`)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("a subscription From stored time + 500ns holds %d deliveries (%v); want the event", n, err)
	}
	for _, c := range []struct{ in, want int64 }{{1, 0}, {1999, 1000}, {2000, 2000}, {-1, -1000}, {-1000, -1000}} {
		if got := sinceNanos(time.Unix(0, c.in)); got != c.want {
			t.Errorf("sinceNanos(%d) = %d; want %d", c.in, got, c.want)
		}
	}
}
