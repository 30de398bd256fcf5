package sqlite

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

func usersTable(t testing.TB, db *sql.DB) {
	t.Helper()
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS users (email TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
}

func TestPublishTxCommitAndRollback(t *testing.T) {
	d, _ := newDB(t)
	db, err := DB(d)
	if err != nil {
		t.Fatal(err)
	}
	usersTable(t, db)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "user.>"})
	ctx := context.Background()

	// Rolled back: neither the row nor the event.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO users VALUES ('a@x')`); err != nil {
		t.Fatal(err)
	}
	if err := d.PublishTx(ctx, tx, []*transport.Message{sourced("rolled", "/signup", `{}`)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	receiveNone(t, s, 100*time.Millisecond)

	// Committed: both, and the receiver blocked in Receive is woken.
	got := make(chan []*transport.Delivery, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		ds, _ := s.Receive(rctx, 10)
		got <- ds
	}()
	time.Sleep(30 * time.Millisecond)
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO users VALUES ('b@x')`); err != nil {
		t.Fatal(err)
	}
	m := sourced("committed", "/signup", `{"email":"b@x"}`)
	m.Type = "user.signup"
	if err := d.PublishTx(ctx, tx, []*transport.Message{m}); err != nil {
		t.Fatal(err)
	}
	// Not visible before the commit.
	var n int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM events WHERE id = 'committed'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("event visible before commit: %d %v", n, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	ds := <-got
	if len(ds) != 1 || ds[0].ID != "committed" || string(ds[0].Data) != `{"email":"b@x"}` {
		t.Fatalf("after commit received %v", ds)
	}
	if err := db.QueryRow(`SELECT count(*) FROM users`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("users %d %v", n, err)
	}

	// A duplicate inside a transaction is reported like Publish's.
	tx, _ = db.BeginTx(ctx, nil)
	dup := sourced("committed", "/signup", `{"other":1}`)
	dup.Type = "user.signup"
	if err := d.PublishTx(ctx, tx, []*transport.Message{dup}); err != nil {
		t.Fatal(err)
	}
	tx.Rollback()
	if dup.Duplicate == nil || string(dup.Duplicate.Data) != `{"email":"b@x"}` {
		t.Fatalf("duplicate in tx: %+v", dup.Duplicate)
	}
}

func TestPublishTxRefusals(t *testing.T) {
	d, _ := newDB(t)
	ctx := context.Background()
	db, _ := DB(d)

	// A closed transaction.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.Commit()
	err = d.PublishTx(ctx, tx, []*transport.Message{msg("a.b")})
	if err == nil || !errors.Is(err, sql.ErrTxDone) || !strings.Contains(err.Error(), "already committed or rolled back") {
		t.Fatalf("closed tx: %v", err)
	}

	// A transaction on another database file.
	other := rawDB(t, filepath.Join(t.TempDir(), "app.db"))
	defer other.Close()
	otx, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer otx.Rollback()
	err = d.PublishTx(ctx, otx, []*transport.Message{msg("a.b")})
	if err == nil || !strings.Contains(err.Error(), "not on the bus's file") {
		t.Fatalf("tx of another database: %v", err)
	}

	// Not a *sql.Tx.
	if err := d.PublishTx(ctx, "tx", []*transport.Message{msg("a.b")}); err == nil || !strings.Contains(err.Error(), "*sql.Tx") {
		t.Fatalf("wrong tx type: %v", err)
	}

	// A pool of its own on the same file is the same database.
	path := d.path
	own := rawDB(t, path)
	defer own.Close()
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.>"})
	tx, err = own.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := msg("a.b")
	if err := d.PublishTx(ctx, tx, []*transport.Message{m}); err != nil {
		t.Fatalf("tx of another pool on the same file: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if ds := receive(t, s, 1, 10*time.Second); len(ds) != 1 || ds[0].ID != m.ID {
		t.Fatalf("received %v", ds)
	}

	// DB of something that is not a sqlite bus.
	if _, err := DB(nil); err == nil {
		t.Fatal("DB(nil) succeeded")
	}
}

// TestTxChild is the child of TestPublishTxKilled: it writes a user row and
// its event in one transaction and either hangs before the commit or
// commits and hangs, until killed.
func TestTxChild(t *testing.T) {
	path, mode := os.Getenv("RIPPLE_SQLITE_TX_CHILD"), os.Getenv("RIPPLE_SQLITE_TX_MODE")
	if path == "" {
		t.Skip("helper process for TestPublishTxKilled")
	}
	fail := func(err error) { fmt.Println("error", err); os.Exit(1) }
	td, err := Open(context.Background(), "sqlite://"+path, transport.Config{})
	if err != nil {
		fail(err)
	}
	d := td.(*driver)
	db, err := DB(d)
	if err != nil {
		fail(err)
	}
	tx, err := db.Begin()
	if err != nil {
		fail(err)
	}
	if _, err := tx.Exec(`INSERT INTO users VALUES ('killed@x')`); err != nil {
		fail(err)
	}
	m := sourced("signup-1", "/signup", `{"email":"killed@x"}`)
	m.Type = "user.signup"
	if err := d.PublishTx(context.Background(), tx, []*transport.Message{m}); err != nil {
		fail(err)
	}
	if mode == "commit" {
		if err := tx.Commit(); err != nil {
			fail(err)
		}
		fmt.Println("committed")
	} else {
		fmt.Println("written")
	}
	select {}
}

func TestPublishTxKilled(t *testing.T) {
	for _, mode := range []string{"before-commit", "commit"} {
		t.Run(mode, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tx.db")
			d := open(t, path, transport.Config{})
			db, _ := DB(d)
			usersTable(t, db)
			// The subscription exists before the child publishes.
			subscribe(t, d, transport.SubscriptionSpec{Name: "welcome", Pattern: "user.>"})
			d.Close() // the child is alone with the file

			cmd := exec.Command(os.Args[0], "-test.run=^TestTxChild$", "-test.v")
			cmd.Env = append(os.Environ(), "RIPPLE_SQLITE_TX_CHILD="+path, "RIPPLE_SQLITE_TX_MODE="+mode)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			lines := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					if l := sc.Text(); l == "written" || l == "committed" || strings.HasPrefix(l, "error ") {
						lines <- l
						return
					}
				}
				close(lines)
			}()
			select {
			case l := <-lines:
				if l != "written" && l != "committed" {
					t.Fatalf("child said %q", l)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("child did not write")
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()

			d = open(t, path, transport.Config{})
			db, _ = DB(d)
			var users, events int
			if err := db.QueryRow(`SELECT count(*) FROM users`).Scan(&users); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(`SELECT count(*) FROM events`).Scan(&events); err != nil {
				t.Fatal(err)
			}
			s := subscribe(t, d, transport.SubscriptionSpec{Name: "welcome", Pattern: "user.>"})
			if mode == "before-commit" {
				if users != 0 || events != 0 {
					t.Fatalf("killed before commit: %d users, %d events; want neither", users, events)
				}
				receiveNone(t, s, 200*time.Millisecond)
				return
			}
			if users != 1 || events != 1 {
				t.Fatalf("killed after commit: %d users, %d events; want both", users, events)
			}
			if ds := receive(t, s, 1, 10*time.Second); len(ds) != 1 || ds[0].ID != "signup-1" {
				t.Fatalf("after commit received %v", ds)
			}
		})
	}
}

// A Publish made while the application holds a transaction of DB open
// waits for its commit, as another process's write would; it does not
// deadlock on the driver's in-process lock.
func TestPublishWhileAppTxOpen(t *testing.T) {
	d, _ := newDB(t)
	db, _ := DB(d)
	usersTable(t, db)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.>"})
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO users VALUES ('x@y')`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- d.Publish(ctx, []*transport.Message{msg("a.b")})
	}()
	time.Sleep(50 * time.Millisecond)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Publish beside an open application transaction: %v", err)
	}
	if ds := receive(t, s, 1, 10*time.Second); len(ds) != 1 {
		t.Fatal("event not delivered")
	}
}

// The commit hook wakes a receiver of this process right after an
// application transaction commits, rather than at the next poll.
func TestPublishTxWakeLatency(t *testing.T) {
	d, _ := newDB(t)
	db, _ := DB(d)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.>"})
	var worst time.Duration
	for range 20 {
		got := make(chan time.Time, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ds, err := s.Receive(ctx, 1)
			if err == nil {
				settleAll(t, s, ds, transport.Complete)
			}
			got <- time.Now()
		}()
		time.Sleep(5 * time.Millisecond)
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if err := d.PublishTx(context.Background(), tx, []*transport.Message{msg("a.b")}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		committed := time.Now()
		worst = max(worst, (<-got).Sub(committed))
	}
	t.Logf("worst commit-to-receive latency over 20 transactions: %v", worst)
}
