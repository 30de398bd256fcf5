package postgres

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/ripplehq/ripple"
)

var bg = context.Background()

// waitFor polls cond until it holds or a generous bound passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// userTable creates a table of the application's own in the test's
// schema's database and returns its quoted name.
func userTable(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	name := pgx.Identifier{"public", "users_" + randHex(5)}.Sanitize()
	if _, err := pool.Exec(bg, "CREATE TABLE "+name+" (id text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+name) })
	return name
}

func openPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(bg, serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func openBus(t testing.TB, url string, opts ...ripple.Option) *ripple.Bus {
	t.Helper()
	bus, err := ripple.Open(bg, url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	return bus
}

// storedEvents counts the events of the schema with the given id.
func storedEvents(t testing.TB, pool *pgxpool.Pool, schema, id string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(bg, "SELECT count(*) FROM "+pgx.Identifier{schema}.Sanitize()+".events WHERE id = $1", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// recorder collects the ids a handler saw.
type recorder struct {
	mu  sync.Mutex
	ids map[string]int
}

func (r *recorder) handle(_ context.Context, e ripple.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]int{}
	}
	r.ids[e.ID]++
	return nil
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

func TestPublishTxPgx(t *testing.T) {
	schema := freshSchema(t)
	url := withParam(serverURL(t), "schema", schema)
	pool := openPool(t)
	users := userTable(t, pool)
	bus := openBus(t, url)
	var rec recorder
	if err := bus.On("user.signup.completed", "tx.sink", rec.handle); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}

	// Rolled back: neither the row nor the event.
	tx, err := pool.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(bg, "INSERT INTO "+users+" (id) VALUES ('u1')"); err != nil {
		t.Fatal(err)
	}
	ev1, err := bus.PublishTx(bg, tx, "user.signup.completed", map[string]string{"user": "u1"})
	if err != nil {
		t.Fatalf("PublishTx: %v", err)
	}
	if err := tx.Rollback(bg); err != nil {
		t.Fatal(err)
	}
	if n := storedEvents(t, pool, schema, ev1.ID); n != 0 {
		t.Fatalf("rolled-back PublishTx left %d events", n)
	}

	// Committed: both, and the handler gets the event.
	tx, err = pool.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(bg, "INSERT INTO "+users+" (id) VALUES ('u2')"); err != nil {
		t.Fatal(err)
	}
	ev2, err := bus.PublishTx(bg, tx, "user.signup.completed", map[string]string{"user": "u2"})
	if err != nil {
		t.Fatalf("PublishTx: %v", err)
	}
	// Not visible before commit.
	if n := storedEvents(t, pool, schema, ev2.ID); n != 0 {
		t.Fatalf("uncommitted event visible: %d rows", n)
	}
	if err := tx.Commit(bg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the committed event to be handled", func() bool { return rec.count(ev2.ID) == 1 })
	time.Sleep(200 * time.Millisecond)
	if rec.count(ev1.ID) != 0 {
		t.Fatal("the rolled-back event was handled")
	}

	// A tx used after commit is refused.
	_, err = bus.PublishTx(bg, tx, "user.signup.completed", "late")
	if err == nil || !strings.Contains(err.Error(), "already committed or rolled back") {
		t.Fatalf("PublishTx on a committed tx = %v; want a refusal saying the tx is finished", err)
	}
}

func TestPublishTxDatabaseSQL(t *testing.T) {
	schema := freshSchema(t)
	url := withParam(serverURL(t), "schema", schema)
	pool := openPool(t)
	users := userTable(t, pool)
	bus := openBus(t, url)
	var rec recorder
	if err := bus.On("user.signup.completed", "tx.sink", rec.handle); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	tx, err := db.BeginTx(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO " + users + " (id) VALUES ('a')"); err != nil {
		t.Fatal(err)
	}
	rolled, err := bus.PublishTx(bg, tx, "user.signup.completed", "a")
	if err != nil {
		t.Fatalf("PublishTx(*sql.Tx): %v", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	tx, err = db.BeginTx(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO " + users + " (id) VALUES ('b')"); err != nil {
		t.Fatal(err)
	}
	ev, err := bus.PublishTx(bg, tx, "user.signup.completed", "b", ripple.WithKey("b"), ripple.WithHeader("xtest", "1"))
	if err != nil {
		t.Fatalf("PublishTx(*sql.Tx): %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the committed event to be handled", func() bool { return rec.count(ev.ID) == 1 })
	if n := storedEvents(t, pool, schema, rolled.ID); n != 0 {
		t.Fatalf("rolled-back event stored (%d rows)", n)
	}
	if _, err := bus.PublishTx(bg, tx, "user.signup.completed", "late"); err == nil || !strings.Contains(err.Error(), "already committed or rolled back") {
		t.Fatalf("PublishTx on a committed *sql.Tx = %v; want a refusal saying the tx is finished", err)
	}
}

func TestPublishTxRefusesForeignTx(t *testing.T) {
	url := schemaURL(t)
	bus := openBus(t, url)
	pool := openPool(t)

	// A database of its own, without Ripple's schema.
	other := "rt_other_" + randHex(4)
	if _, err := pool.Exec(bg, "CREATE DATABASE "+other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP DATABASE IF EXISTS "+other+" WITH (FORCE)") })
	cfg, err := pgx.ParseConfig(serverURL(t))
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
	_, err = bus.PublishTx(bg, tx, "user.signup.completed", "x")
	if err == nil || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), "bus's database") {
		t.Fatalf("PublishTx with a tx on database %s = %v; want a refusal naming it", other, err)
	}

	// Another kind of value.
	_, err = bus.PublishTx(bg, "not a tx", "user.signup.completed", "x")
	if err == nil || !strings.Contains(err.Error(), "pgx.Tx") {
		t.Fatalf("PublishTx with a string = %v; want a refusal naming the kinds taken", err)
	}

	// A tx that failed: nothing can be written in it.
	tx2, err := pool.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx2.Rollback(bg) }()
	_, _ = tx2.Exec(bg, "SELECT 1/0")
	_, err = bus.PublishTx(bg, tx2, "user.signup.completed", "x")
	if err == nil || !strings.Contains(err.Error(), "failed") {
		t.Fatalf("PublishTx in an aborted tx = %v; want a refusal", err)
	}
}

// The crash tests run the test binary again as a child that opens a
// transaction, writes a user row, publishes in it and then either waits
// (the parent kills it before commit) or commits and waits (killed after).
const (
	envTxRole   = "RIPPLE_PG_TXCRASH_ROLE"
	envTxURL    = "RIPPLE_PG_TXCRASH_URL"
	envTxTable  = "RIPPLE_PG_TXCRASH_TABLE"
	txReadyLine = "published "
)

func txCrashChild() {
	role := os.Getenv(envTxRole)
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "txcrash child:", err)
		os.Exit(2)
	}
	go func() { time.Sleep(2 * time.Minute); os.Exit(3) }()
	url := os.Getenv(envTxURL)
	bus, err := ripple.Open(bg, url)
	if err != nil {
		fail(err)
	}
	base, _, _ := strings.Cut(url, "&schema=")
	pool, err := pgxpool.New(bg, base)
	if err != nil {
		fail(err)
	}
	tx, err := pool.Begin(bg)
	if err != nil {
		fail(err)
	}
	if _, err := tx.Exec(bg, "INSERT INTO "+os.Getenv(envTxTable)+" (id) VALUES ('crash')"); err != nil {
		fail(err)
	}
	ev, err := bus.PublishTx(bg, tx, "user.signup.completed", "crash")
	if err != nil {
		fail(err)
	}
	if role == "commit" {
		if err := tx.Commit(bg); err != nil {
			fail(err)
		}
	}
	fmt.Println(txReadyLine + ev.ID)
	select {} // killed by the parent
}

func TestMain(m *testing.M) {
	if os.Getenv(envTxRole) != "" {
		txCrashChild()
	}
	os.Exit(m.Run())
}

func runTxCrash(t *testing.T, role string) {
	schema := freshSchema(t)
	url := withParam(serverURL(t), "schema", schema)
	pool := openPool(t)
	users := userTable(t, pool)
	// The handler exists before the child publishes.
	bus := openBus(t, url)
	var rec recorder
	if err := bus.On("user.signup.completed", "crash.sink", rec.handle); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envTxRole+"="+role, envTxURL+"="+url, envTxTable+"="+users)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), txReadyLine) {
				lines <- strings.TrimPrefix(sc.Text(), txReadyLine)
				return
			}
		}
		close(lines)
	}()
	var id string
	select {
	case l, ok := <-lines:
		if !ok {
			_ = cmd.Wait()
			t.Fatal("child exited without publishing")
		}
		id = l
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("child did not publish in time")
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = cmd.Wait()

	var rows int
	count := func() (int, int) {
		if err := pool.QueryRow(bg, "SELECT count(*) FROM "+users).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		return rows, storedEvents(t, pool, schema, id)
	}
	if role == "commit" {
		u, e := count()
		if u != 1 || e != 1 {
			t.Fatalf("after commit and SIGKILL: %d user rows and %d events; want both", u, e)
		}
		waitFor(t, "the committed event to be delivered", func() bool { return rec.count(id) == 1 })
		return
	}
	// Killed before commit: PostgreSQL aborts the transaction when the
	// connection drops.
	waitFor(t, "the killed child's transaction to end", func() bool {
		var n int
		_ = pool.QueryRow(bg, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = $1",
			strings.Trim(strings.TrimPrefix(users, `"public".`), `"`)).Scan(&n)
		return n == 0
	})
	u, e := count()
	if u != 0 || e != 0 {
		t.Fatalf("after SIGKILL before commit: %d user rows and %d events; want neither", u, e)
	}
	time.Sleep(300 * time.Millisecond)
	if rec.count(id) != 0 {
		t.Fatal("an event of an uncommitted transaction was delivered")
	}
}

func TestPublishTxCrashBeforeCommit(t *testing.T) { runTxCrash(t, "open") }

func TestPublishTxCrashAfterCommit(t *testing.T) { runTxCrash(t, "commit") }
