package outbox_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/outbox"
	"github.com/ripplehq/ripple/transport"
	_ "github.com/ripplehq/ripple/transport/redis"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

var bg = context.Background()

func env(t testing.TB, name, server string) string {
	t.Helper()
	u := os.Getenv(name)
	if u == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start %s (scripts/test does)", name, server)
		}
		t.Skipf("no %s: set %s to run the outbox tests", server, name)
	}
	return u
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fixture is a PostgreSQL outbox in a fresh schema and a Redis namespace.
type fixture struct {
	pool     *pgxpool.Pool
	schema   string
	pgURL    string
	redisURL string
	ob       *outbox.Postgres
	// pubOnly writes to the same outbox but relays nothing, for buses
	// whose relays run apart.
	pubOnly *outbox.Postgres
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		pgURL:    env(t, "RIPPLE_TEST_POSTGRES_URL", "PostgreSQL"),
		redisURL: env(t, "RIPPLE_TEST_REDIS_URL", "redis-server"),
		schema:   "obt_" + randHex(5),
	}
	f.redisURL += "?prefix=obt." + randHex(4)
	var err error
	if f.pool, err = pgxpool.New(bg, f.pgURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = f.pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+f.schema+" CASCADE")
		f.pool.Close()
	})
	if f.ob, err = outbox.NewPostgres(f.pool, outbox.WithSchema(f.schema)); err != nil {
		t.Fatal(err)
	}
	if f.pubOnly, err = outbox.NewPostgres(f.pool, outbox.WithSchema(f.schema), outbox.RelayElsewhere()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ob.Pending(bg); err != nil { // creates the table
		t.Fatal(err)
	}
	return f
}

// sink records, per key, the order in which events arrive.
type sink struct {
	mu    sync.Mutex
	byKey map[string][]string
	seen  map[string]int
}

func (s *sink) handle(_ context.Context, e ripple.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byKey == nil {
		s.byKey, s.seen = map[string][]string{}, map[string]int{}
	}
	s.seen[e.ID]++
	if s.seen[e.ID] == 1 {
		s.byKey[e.Key] = append(s.byKey[e.Key], string(e.Data))
	}
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func (s *sink) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[id] > 0
}

func waitFor(t testing.TB, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCommittedReachBrokerRolledBackNever(t *testing.T) {
	f := newFixture(t)
	bus, err := ripple.Open(bg, f.redisURL, ripple.WithOutbox(f.ob))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var s sink
	if err := bus.On("user.signup.completed", "outbox.sink", s.handle); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(bg, "CREATE TABLE "+f.schema+".users (id text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}

	tx, err := f.pool.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(bg, "INSERT INTO "+f.schema+".users VALUES ('gone')"); err != nil {
		t.Fatal(err)
	}
	rolled, err := bus.PublishTx(bg, tx, "user.signup.completed", "gone")
	if err != nil {
		t.Fatalf("PublishTx through the outbox: %v", err)
	}
	if err := tx.Rollback(bg); err != nil {
		t.Fatal(err)
	}

	tx, err = f.pool.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(bg, "INSERT INTO "+f.schema+".users VALUES ('kept')"); err != nil {
		t.Fatal(err)
	}
	kept, err := bus.PublishTx(bg, tx, "user.signup.completed", "kept", ripple.WithKey("kept"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(bg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the committed event to reach Redis and its handler", 30*time.Second, func() bool { return s.has(kept.ID) })
	waitFor(t, "the outbox to empty", 30*time.Second, func() bool {
		n, err := f.ob.Pending(bg)
		return err == nil && n == 0
	})
	time.Sleep(300 * time.Millisecond)
	if s.has(rolled.ID) {
		t.Fatal("a rolled-back event reached the broker")
	}
	if _, err := bus.PublishTx(bg, tx, "user.signup.completed", "late"); err == nil || !strings.Contains(err.Error(), "already committed or rolled back") {
		t.Fatalf("PublishTx with a committed tx = %v; want a refusal", err)
	}
}

// put writes n events per key, one transaction per event, each carrying
// its key and position.
func (f *fixture) put(t testing.TB, bus *ripple.Bus, keys []string, n int) int {
	t.Helper()
	total := 0
	for i := range n {
		for _, k := range keys {
			tx, err := f.pool.Begin(bg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bus.PublishTx(bg, tx, "order.step.done", fmt.Sprintf("%s-%04d", k, i), ripple.WithKey(k)); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(bg); err != nil {
				t.Fatal(err)
			}
			total++
		}
	}
	return total
}

func checkOrder(t *testing.T, s *sink, keys []string, n int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, n := range s.seen {
		if n > 1 {
			t.Errorf("event %s was delivered %d times; the broker's deduplication should have stored a relayed-again event once", id, n)
		}
	}
	for _, k := range keys {
		got := s.byKey[k]
		if len(got) != n {
			t.Errorf("key %s: %d events arrived, want %d", k, len(got), n)
		}
		for i, v := range got {
			if want := fmt.Sprintf("%s-%04d", k, i); v != `"`+want+`"` {
				t.Fatalf("key %s: event %d is %s, want %s: a key was reordered", k, i, v, want)
			}
		}
	}
}

func openRedisDriver(t testing.TB, url string) transport.Driver {
	t.Helper()
	open, ok := transport.Lookup("redis")
	if !ok {
		t.Fatal("redis transport not registered")
	}
	d, err := open(bg, url, transport.Config{Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Several relays at once move every event, none reordered per key.
func TestConcurrentRelaysKeepKeyOrder(t *testing.T) {
	f := newFixture(t)
	// A publishing bus without a relay of its own: the relays below run
	// apart, as `ripple relay` would.
	pub, err := ripple.Open(bg, f.redisURL, ripple.WithOutbox(f.pubOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	consumer, err := ripple.Open(bg, f.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	var s sink
	if err := consumer.On("order.step.done", "order.sink", s.handle, ripple.Concurrency(1)); err != nil {
		t.Fatal(err)
	}
	if err := consumer.Start(bg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	for range 3 {
		d := openRedisDriver(t, f.redisURL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer d.Close()
			if err := f.ob.Relay(ctx, d); err != nil {
				t.Error(err)
			}
		}()
	}
	keys := []string{"a", "b", "c", "d"}
	const n = 40
	total := f.put(t, pub, keys, n)
	waitFor(t, "every event to arrive", 60*time.Second, func() bool { return s.count() >= total })
	cancel()
	wg.Wait()
	checkOrder(t, &s, keys, n)
}

// The relay child: relays the outbox to Redis until killed.
const (
	envRole   = "RIPPLE_OUTBOX_TEST_ROLE"
	envPG     = "RIPPLE_OUTBOX_TEST_PG"
	envRedis  = "RIPPLE_OUTBOX_TEST_REDIS"
	envSchema = "RIPPLE_OUTBOX_TEST_SCHEMA"
)

func TestMain(m *testing.M) {
	if os.Getenv(envRole) == "relay" {
		go func() { time.Sleep(2 * time.Minute); os.Exit(3) }()
		pool, err := pgxpool.New(bg, os.Getenv(envPG))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		ob, err := outbox.NewPostgres(pool, outbox.WithSchema(os.Getenv(envSchema)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		open, _ := transport.Lookup("redis")
		d, err := open(bg, os.Getenv(envRedis), transport.Config{Logger: slog.Default()})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println("relaying")
		_ = ob.Relay(bg, d)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A relay killed with SIGKILL in the middle of its batches loses nothing
// and reorders no key: a relay started afterwards moves the rest, and the
// events the killed one had published but not yet deleted are absorbed by
// the broker's publish deduplication.
func TestRelayKilledMidBatch(t *testing.T) {
	f := newFixture(t)
	pub, err := ripple.Open(bg, f.redisURL, ripple.WithOutbox(f.pubOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	keys := []string{"k1", "k2", "k3"}
	const n = 300
	total := 0
	// One transaction holds many events: batches are big, so the kill
	// lands inside one.
	for i := range n {
		tx, err := f.pool.Begin(bg)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if _, err := pub.PublishTx(bg, tx, "order.step.done", fmt.Sprintf("%s-%04d", k, i), ripple.WithKey(k)); err != nil {
				t.Fatal(err)
			}
			total++
		}
		if err := tx.Commit(bg); err != nil {
			t.Fatal(err)
		}
	}
	consumer, err := ripple.Open(bg, f.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	var s sink
	// The subscription exists before the relay publishes.
	if err := consumer.On("order.step.done", "order.sink", s.handle, ripple.Concurrency(1)); err != nil {
		t.Fatal(err)
	}
	if err := consumer.Start(bg); err != nil {
		t.Fatal(err)
	}

	for round := 0; round < 3; round++ {
		before, err := f.ob.Pending(bg)
		if err != nil {
			t.Fatal(err)
		}
		if before == 0 {
			break
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envRole+"=relay", envPG+"="+f.pgURL, envRedis+"="+f.redisURL, envSchema+"="+f.schema)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		_, _ = bufio.NewReader(out).ReadString('\n')
		// Kill it once it has moved something, or at once if it is fast.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			p, _ := f.ob.Pending(bg)
			if p < before || s.count() > 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Logf("round %d: killed the relay with %d → %s pending", round, before, pendingStr(f))
	}
	d := openRedisDriver(t, f.redisURL)
	defer d.Close()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan struct{})
	go func() { defer close(done); _ = f.ob.Relay(ctx, d) }()
	waitFor(t, "every committed event to reach the broker", 60*time.Second, func() bool { return s.count() >= total })
	cancel()
	<-done
	checkOrder(t, &s, keys, n)
}

func pendingStr(f *fixture) string {
	n, err := f.ob.Pending(bg)
	if err != nil {
		return err.Error()
	}
	return strconv.FormatInt(n, 10)
}

func TestPutRefuses(t *testing.T) {
	f := newFixture(t)
	if err := f.ob.Put(bg, "nope", []*transport.Message{{ID: "x", Type: "a.b"}}); err == nil || !strings.Contains(err.Error(), "pgx.Tx") {
		t.Fatalf("Put with a string = %v", err)
	}
	// A transaction on another database.
	other := "obt_db_" + randHex(4)
	if _, err := f.pool.Exec(bg, "CREATE DATABASE "+other); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = f.pool.Exec(context.Background(), "DROP DATABASE IF EXISTS "+other+" WITH (FORCE)") }()
	cfg, err := pgx.ParseConfig(f.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = other
	c, err := pgx.ConnectConfig(bg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(bg)
	tx, err := c.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(bg) }()
	if err := f.ob.Put(bg, tx, []*transport.Message{{ID: "x", Type: "a.b"}}); err == nil || !strings.Contains(err.Error(), other) {
		t.Fatalf("Put with a tx on another database = %v; want a refusal naming it", err)
	}
}

func TestSQLiteOutbox(t *testing.T) {
	redisURL := env(t, "RIPPLE_TEST_REDIS_URL", "redis-server") + "?prefix=obs." + randHex(4)
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "app.db")+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE users (id TEXT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.NewSQLite(db, outbox.WithSchema("x")); err == nil {
		t.Fatal("NewSQLite accepted WithSchema")
	}
	ob, err := outbox.NewSQLite(db)
	if err != nil {
		t.Fatal(err)
	}
	bus, err := ripple.Open(bg, redisURL, ripple.WithOutbox(ob))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var s sink
	if err := bus.On("order.step.done", "sqlite.sink", s.handle, ripple.Concurrency(1)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	// A second relay competes with the bus's own.
	d := openRedisDriver(t, redisURL)
	defer d.Close()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan struct{})
	go func() { defer close(done); _ = ob.Relay(ctx, d) }()

	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO users VALUES ('gone')"); err != nil {
		t.Fatal(err)
	}
	rolled, err := bus.PublishTx(bg, tx, "order.step.done", "gone", ripple.WithKey("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	keys := []string{"a", "b"}
	const n = 30
	for i := range n {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO users VALUES (?)", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if _, err := bus.PublishTx(bg, tx, "order.step.done", fmt.Sprintf("%s-%04d", k, i), ripple.WithKey(k)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every committed event to arrive", 60*time.Second, func() bool { return s.count() >= n*len(keys) })
	cancel()
	<-done
	time.Sleep(200 * time.Millisecond)
	if s.has(rolled.ID) {
		t.Fatal("a rolled-back event reached the broker")
	}
	checkOrder(t, &s, keys, n)
	if _, err := bus.PublishTx(bg, "nope", "order.step.done", 1); err == nil || !strings.Contains(err.Error(), "*sql.Tx") {
		t.Fatalf("PublishTx with a string = %v", err)
	}
}
