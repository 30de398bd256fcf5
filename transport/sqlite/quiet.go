package sqlite

import (
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"sync/atomic"

	msqlite "modernc.org/sqlite"
)

// Quiet subscriptions. In a steady flow an unordered handler has no
// deliveries rows at all: everything it takes comes from the log into
// lease windows. A lease then has nothing to ask of the rows, yet the
// look that tells it so (rowsState) is a statement per lease. The writer
// remembers which subscriptions it found without rows, and skips the look
// for them while nothing can have written a row since:
//
//   - every change to a deliveries row made on the write connection calls
//     ripple_rows_changed through a TEMP trigger (temp triggers live on
//     that connection only), which moves rowsChanged;
//   - a commit by any other connection or process moves the file's data
//     version, and a transaction that begins after one forgets them all
//     (forgetQuiet), as does a rollback, which can bring rows back;
//   - a window the subscription holds can run out, so a memory lasts only
//     until the earliest lease end of the windows it knows of.
//
// Ordered subscriptions are never quiet: they read rows.

// rowsChanged counts changes to deliveries rows made on the write
// connections of this process.
var rowsChanged atomic.Uint64

func init() {
	msqlite.MustRegisterScalarFunction("ripple_rows_changed", 0, func(*msqlite.FunctionContext, []sqldriver.Value) (sqldriver.Value, error) {
		rowsChanged.Add(1)
		return nil, nil
	})
}

// quietTriggers are created on the write connection when it opens.
var quietTriggers = []string{
	`CREATE TEMP TRIGGER IF NOT EXISTS ripple_rows_ins AFTER INSERT ON main.deliveries BEGIN SELECT ripple_rows_changed(); END`,
	`CREATE TEMP TRIGGER IF NOT EXISTS ripple_rows_upd AFTER UPDATE ON main.deliveries BEGIN SELECT ripple_rows_changed(); END`,
	`CREATE TEMP TRIGGER IF NOT EXISTS ripple_rows_del AFTER DELETE ON main.deliveries BEGIN SELECT ripple_rows_changed(); END`,
}

func createQuietTriggers(ctx context.Context, c interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}) error {
	for _, q := range quietTriggers {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// quietRec remembers a subscription found without rows: under which
// counts, and until when (the earliest lease end of its windows, 0 for
// none known).
type quietRec struct {
	changed, epoch uint64
	until          int64
}

// quietNow reports whether the subscription is known to have no rows now.
func (w *writer) quietNow(sub int64) (until int64, ok bool) {
	q, ok := w.quiet[sub]
	if !ok || q.changed != rowsChanged.Load() || q.epoch != w.quietEpoch || (q.until != 0 && q.until < w.now) {
		return 0, false
	}
	return q.until, true
}

// setQuiet remembers that the subscription has no rows, with the
// earliest lease end of its open windows (0 for none).
func (w *writer) setQuiet(sub int64, until int64) {
	w.quiet[sub] = quietRec{changed: rowsChanged.Load(), epoch: w.quietEpoch, until: until}
}

// quietWindow notes a window the subscription opened, lease end until.
func (w *writer) quietWindow(sub int64, until int64) {
	if q, ok := w.quiet[sub]; ok && (q.until == 0 || until < q.until) {
		q.until = until
		w.quiet[sub] = q
	}
}

// forgetQuiet forgets every quiet subscription.
func (w *writer) forgetQuiet() {
	w.quietEpoch++
}
