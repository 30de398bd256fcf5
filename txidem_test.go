package ripple_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/memory"
	_ "github.com/ripplehq/ripple/transport/postgres"
	"github.com/ripplehq/ripple/transport/sqlite"
)

// idemStore is a database that holds both the bus and the application's
// table of effects, with what the tests need to look into it.
type idemStore struct {
	kind   string
	busURL string
	base   string // postgres: the server URL the application's pool opens
	table  string // the application's effects table
	schema string // postgres: the bus's schema
	ph     func(i int) string
	pg     *sql.DB // postgres: the application's pool, shared by the buses
}

func randName(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// storeKinds are the transports under test: sqlite, and postgres when a
// server is configured.
func storeKinds(t *testing.T) []string {
	if os.Getenv("RIPPLE_TEST_POSTGRES_URL") == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_POSTGRES_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start PostgreSQL (scripts/test does)")
		}
		t.Log("no PostgreSQL server (set RIPPLE_TEST_POSTGRES_URL=postgres://user@127.0.0.1:5432/db?sslmode=disable): CompleteTx tested on sqlite only")
		return []string{"sqlite"}
	}
	return []string{"sqlite", "postgres"}
}

// newStore returns a fresh store of the kind: a new sqlite file, or a new
// schema and table on the PostgreSQL server.
func newStore(t *testing.T, kind string) *idemStore {
	if kind == "sqlite" {
		return &idemStore{
			kind:   "sqlite",
			busURL: "sqlite://" + filepath.Join(t.TempDir(), "bus.db"),
			table:  "effects",
			ph:     func(int) string { return "?" },
		}
	}
	base := os.Getenv("RIPPLE_TEST_POSTGRES_URL")
	schema := randName("txidem_")
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	db, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	pg := &idemStore{kind: "postgres", busURL: base + sep + "schema=" + schema, base: base, schema: schema,
		table: "public." + randName("effects_"), ph: func(i int) string { return fmt.Sprintf("$%d", i) }, pg: db}
	t.Cleanup(func() {
		_, _ = db.Exec("DROP TABLE IF EXISTS " + pg.table)
		_, _ = db.Exec(`DROP SCHEMA IF EXISTS "` + schema + `" CASCADE`)
		_ = db.Close()
	})
	return pg
}

// appDB returns the application's pool on the store's database.
func (s *idemStore) appDB(t testing.TB, bus *ripple.Bus) *sql.DB {
	if s.pg != nil {
		return s.pg
	}
	db, err := sqlite.DB(bus)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func (s *idemStore) createTable(t testing.TB, db *sql.DB) {
	if _, err := db.Exec("CREATE TABLE IF NOT EXISTS " + s.table + " (event_id TEXT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
}

func (s *idemStore) count(t testing.TB, db *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// rows counts the effects the handler wrote for the event.
func (s *idemStore) rows(t testing.TB, db *sql.DB, id string) int {
	return s.count(t, db, "SELECT count(*) FROM "+s.table+" WHERE event_id = "+s.ph(1), id)
}

func (s *idemStore) ripple(name string) string {
	if s.schema != "" {
		return `"` + s.schema + `".` + name
	}
	return name
}

// followUps counts the follow-up events the handler published.
func (s *idemStore) followUps(t testing.TB, db *sql.DB) int {
	return s.count(t, db, "SELECT count(*) FROM "+s.ripple("events")+" WHERE type = 'effect.made'")
}

// marks counts the handler's done marks.
func (s *idemStore) marks(t testing.TB, db *sql.DB, handler string) int {
	done := "done = 1"
	if s.pg != nil {
		done = "done"
	}
	return s.count(t, db, "SELECT count(*) FROM "+s.ripple("claims")+" WHERE handler = "+s.ph(1)+" AND "+done, handler)
}

// effectHandler writes one row and publishes one follow-up event per
// event, marking it done with CompleteTx, all in one transaction.
type effectHandler struct {
	bus *ripple.Bus
	db  *sql.DB
	st  *idemStore

	calls, already, returned atomic.Int32

	onEnter      func(n int32)
	beforeCommit func(n int32) error // an error rolls back and fails the attempt
	afterCommit  func(n int32) error
}

func (h *effectHandler) handle(ctx context.Context, e ripple.Event) error {
	defer h.returned.Add(1)
	n := h.calls.Add(1)
	if h.onEnter != nil {
		h.onEnter(n)
	}
	// The attempt may outlive its ctx's deadline (the concurrent case);
	// its transaction must not be cut short by it.
	dctx := context.WithoutCancel(ctx)
	tx, err := h.db.BeginTx(dctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := h.bus.CompleteTx(dctx, tx); errors.Is(err, ripple.ErrAlreadyDone) {
		h.already.Add(1)
		return nil
	} else if err != nil {
		return err
	}
	if _, err := tx.ExecContext(dctx, "INSERT INTO "+h.st.table+" (event_id) VALUES ("+h.st.ph(1)+")", e.ID); err != nil {
		return err
	}
	if _, err := h.bus.PublishTx(dctx, tx, "effect.made", e.ID); err != nil {
		return err
	}
	if h.beforeCommit != nil {
		if err := h.beforeCommit(n); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if h.afterCommit != nil {
		return h.afterCommit(n)
	}
	return nil
}

const effectsHandler = "txidem.effects"

// startEffects opens a bus on the store with the effects handler.
func startEffects(t *testing.T, st *idemStore, h *effectHandler, opts ...ripple.HandlerOption) *ripple.Bus {
	t.Helper()
	bus, err := ripple.Open(context.Background(), st.busURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	h.bus, h.st = bus, st
	h.db = st.appDB(t, bus)
	st.createTable(t, h.db)
	if err := bus.On("order.placed", effectsHandler, h.handle, opts...); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return bus
}

func waitIdle(t *testing.T, bus *ripple.Bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// forEachMode runs f on a fresh store of each kind, with and without
// Idempotent().
func forEachMode(t *testing.T, f func(t *testing.T, st *idemStore, idem bool)) {
	for _, kind := range storeKinds(t) {
		for _, idem := range []bool{false, true} {
			name := kind + "/plain"
			if idem {
				name = kind + "/idempotent"
			}
			t.Run(name, func(t *testing.T) { f(t, newStore(t, kind), idem) })
		}
	}
}

func modeOpts(idem bool, opts ...ripple.HandlerOption) []ripple.HandlerOption {
	if idem {
		opts = append(opts, ripple.Idempotent())
	}
	return opts
}

// A redelivery after the transaction committed (here: the handler fails
// after its commit, so the event is retried) is skipped: the handler does
// not run again, and nothing is written twice.
func TestCompleteTxRedelivery(t *testing.T) {
	forEachMode(t, func(t *testing.T, st *idemStore, idem bool) {
		h := &effectHandler{afterCommit: func(n int32) error {
			if n == 1 {
				return errors.New("failed after commit")
			}
			return nil
		}}
		bus := startEffects(t, st, h, modeOpts(idem, ripple.Backoff(10*time.Millisecond, 20*time.Millisecond))...)
		ev, err := bus.Publish(context.Background(), "order.placed", "o-1")
		if err != nil {
			t.Fatal(err)
		}
		// The retry finds the event marked done and skips the handler.
		waitIdle(t, bus)
		if r, f, m := st.rows(t, h.db, ev.ID), st.followUps(t, h.db), st.marks(t, h.db, effectsHandler); r != 1 || f != 1 || m != 1 {
			t.Fatalf("after a redelivery: %d rows, %d follow-up events, %d done marks; want 1 of each", r, f, m)
		}
		if c := h.calls.Load(); c != 1 {
			t.Fatalf("handler ran %d times; want once (the redelivery of a done event is skipped)", c)
		}
	})
}

// A transaction rolled back leaves no row, no follow-up event and no done
// mark, and the event is retried.
func TestCompleteTxRollback(t *testing.T) {
	forEachMode(t, func(t *testing.T, st *idemStore, idem bool) {
		h := &effectHandler{}
		var seen [3]int
		var id atomic.Value
		h.beforeCommit = func(n int32) error {
			if n == 1 {
				return errors.New("rolled back")
			}
			return nil
		}
		h.onEnter = func(n int32) {
			if n == 2 {
				seen = [3]int{st.rows(t, h.db, id.Load().(string)), st.followUps(t, h.db), st.marks(t, h.db, effectsHandler)}
			}
		}
		bus := startEffects(t, st, h, modeOpts(idem, ripple.Backoff(10*time.Millisecond, 20*time.Millisecond))...)
		id.Store("o-2")
		ev, err := bus.Publish(context.Background(), "order.placed", "o-2", ripple.WithID("o-2"))
		if err != nil {
			t.Fatal(err)
		}
		pollUntil(t, "the retry", func() bool { return h.returned.Load() == 2 })
		waitIdle(t, bus)
		if seen != [3]int{} {
			t.Fatalf("after a rollback the retry saw %d rows, %d follow-up events, %d done marks; want none", seen[0], seen[1], seen[2])
		}
		if r, f, m := st.rows(t, h.db, ev.ID), st.followUps(t, h.db), st.marks(t, h.db, effectsHandler); r != 1 || f != 1 || m != 1 {
			t.Fatalf("after the retry: %d rows, %d follow-up events, %d done marks; want 1 of each", r, f, m)
		}
		if a := h.already.Load(); a != 0 {
			t.Fatalf("%d attempts found the event done after a rollback", a)
		}
	})
}

// Two deliveries of one event running at once (the first is abandoned
// past its Timeout while still running, so the event is delivered again
// beside it) commit exactly one effect: the second CompleteTx waits for
// the first transaction and then finds the event done.
func TestCompleteTxConcurrent(t *testing.T) {
	forEachMode(t, func(t *testing.T, st *idemStore, idem bool) {
		h := &effectHandler{}
		second := make(chan struct{})
		h.onEnter = func(n int32) {
			switch n {
			case 1:
				select {
				case <-second:
				case <-time.After(2 * time.Minute):
				}
			case 2:
				close(second)
			}
		}
		var sawLock atomic.Bool
		h.beforeCommit = func(int32) error {
			// Hold the transaction open until the other attempt is
			// waiting on it (postgres: blocked on the claim's row; sqlite:
			// on the write lock, which BEGIN IMMEDIATE takes).
			if st.pg != nil {
				deadline := time.Now().Add(30 * time.Second)
				for time.Now().Before(deadline) {
					var n int
					_ = st.pg.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%claims%'`).Scan(&n)
					if n > 0 {
						sawLock.Store(true)
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			} else {
				time.Sleep(200 * time.Millisecond)
			}
			return nil
		}
		bus := startEffects(t, st, h, modeOpts(idem, ripple.Timeout(300*time.Millisecond), ripple.Backoff(10*time.Millisecond, 20*time.Millisecond))...)
		ev, err := bus.Publish(context.Background(), "order.placed", "o-3")
		if err != nil {
			t.Fatal(err)
		}
		pollUntil(t, "both attempts", func() bool { return h.returned.Load() == 2 })
		waitIdle(t, bus)
		if r, f, m := st.rows(t, h.db, ev.ID), st.followUps(t, h.db), st.marks(t, h.db, effectsHandler); r != 1 || f != 1 || m != 1 {
			t.Fatalf("after two concurrent deliveries: %d rows, %d follow-up events, %d done marks; want 1 of each", r, f, m)
		}
		if a := h.already.Load(); a != 1 {
			t.Fatalf("%d attempts found the event done; want 1", a)
		}
		if st.pg != nil && !sawLock.Load() {
			t.Fatal("the second attempt never waited on the first one's claim")
		}
	})
}

const (
	envIdemChild = "RIPPLE_TXIDEM_CHILD"
	envIdemURL   = "RIPPLE_TXIDEM_URL"
	envIdemBase  = "RIPPLE_TXIDEM_BASE"
	envIdemTable = "RIPPLE_TXIDEM_TABLE"
)

// TestCompleteTxChild is the child of TestCompleteTxKilled: its handler
// commits the effect, prints "committed" and hangs until killed, before
// the bus can settle the delivery.
func TestCompleteTxChild(t *testing.T) {
	kind := os.Getenv(envIdemChild)
	if kind == "" {
		t.Skip("helper process for TestCompleteTxKilled")
	}
	go func() { time.Sleep(2 * time.Minute); os.Exit(3) }()
	st := &idemStore{kind: kind, busURL: os.Getenv(envIdemURL), table: os.Getenv(envIdemTable), ph: func(int) string { return "?" }}
	if kind == "postgres" {
		db, err := sql.Open("pgx", os.Getenv(envIdemBase))
		if err != nil {
			t.Fatal(err)
		}
		st.pg, st.ph = db, func(i int) string { return fmt.Sprintf("$%d", i) }
	}
	h := &effectHandler{afterCommit: func(int32) error {
		fmt.Println("committed")
		select {} // killed by the parent
	}}
	opts := []ripple.HandlerOption{ripple.Lease(time.Second)}
	if os.Getenv("RIPPLE_TXIDEM_IDEM") == "1" {
		opts = append(opts, ripple.Idempotent())
	}
	bus := startEffects(t, st, h, opts...)
	if _, err := bus.Publish(context.Background(), "order.placed", "o-4", ripple.WithID("o-4")); err != nil {
		t.Fatal(err)
	}
	select {}
}

// A process killed by SIGKILL after its handler's transaction committed
// and before the delivery was settled: the redelivery, in another
// process, is skipped and writes nothing.
func TestCompleteTxKilled(t *testing.T) {
	forEachMode(t, func(t *testing.T, st *idemStore, idem bool) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCompleteTxChild$", "-test.v")
		idemEnv := "0"
		if idem {
			idemEnv = "1"
		}
		cmd.Env = append(os.Environ(), envIdemChild+"="+st.kind, envIdemURL+"="+st.busURL, envIdemBase+"="+st.base,
			envIdemTable+"="+st.table, "RIPPLE_TXIDEM_IDEM="+idemEnv)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		committed := make(chan bool, 1)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if sc.Text() == "committed" {
					committed <- true
					return
				}
				t.Log("child:", sc.Text())
			}
			committed <- false
		}()
		select {
		case ok := <-committed:
			if !ok {
				_ = cmd.Wait()
				t.Fatal("the child exited before committing")
			}
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			t.Fatal("the child did not commit in time")
		}
		if err := cmd.Process.Kill(); err != nil { // SIGKILL
			t.Fatal(err)
		}
		_ = cmd.Wait()

		h := &effectHandler{}
		bus := startEffects(t, st, h, modeOpts(idem, ripple.Lease(time.Second))...)
		waitIdle(t, bus)
		if r, f, m := st.rows(t, h.db, "o-4"), st.followUps(t, h.db), st.marks(t, h.db, effectsHandler); r != 1 || f != 1 || m != 1 {
			t.Fatalf("after SIGKILL and the redelivery: %d rows, %d follow-up events, %d done marks; want 1 of each", r, f, m)
		}
		if c := h.calls.Load(); c != 0 {
			t.Fatalf("the redelivery ran the handler %d times; want it skipped", c)
		}
	})
}

// CompleteTx refuses to run outside a handler, and on a transport that
// keeps no claims in the application's database.
func TestCompleteTxRefusals(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	db, err := sqlite.DB(bus)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := bus.CompleteTx(ctx, tx); !errors.Is(err, ripple.ErrInvalidOption) || !strings.Contains(err.Error(), "not a handler's context") {
		t.Fatalf("CompleteTx outside a handler: %v; want an error saying so", err)
	}

	mem, err := ripple.Open(ctx, "memory://completetx-refusal")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	got := make(chan error, 1)
	if err := mem.On("order.placed", "refusal", func(ctx context.Context, e ripple.Event) error {
		got <- mem.CompleteTx(ctx, tx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := mem.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := mem.Publish(ctx, "order.placed", "x"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if !errors.Is(err, ripple.ErrNotSupported) || !strings.Contains(err.Error(), "memory") {
			t.Fatalf("CompleteTx on memory://: %v; want ErrNotSupported naming the transport", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the handler did not run")
	}
}
