package sqlite

import (
	"context"
	"database/sql"
	"testing"

	"github.com/ripplehq/ripple/transport"
)

func rawDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

// pruneNow runs one pruning pass in the writer goroutine, which owns the
// connection.
func (d *driver) pruneNow(t testing.TB) {
	t.Helper()
	err := d.exec(context.Background(), func(w *writer) error { _, err := w.pruneStep(); return err }, 0)
	if err != nil {
		t.Fatal(err)
	}
}

// statsOf returns the Stats of one handler.
func statsOf(t testing.TB, d *driver, handler string) transport.Stats {
	t.Helper()
	st, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Handler == handler {
			return s
		}
	}
	t.Fatalf("no stats for handler %q in %+v", handler, st)
	return transport.Stats{}
}
