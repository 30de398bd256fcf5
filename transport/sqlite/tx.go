package sqlite

import (
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ripplehq/ripple/transport"
	msqlite "modernc.org/sqlite"
)

var (
	_ transport.TxPublisher = (*driver)(nil)
	_ transport.TxClaimer   = (*driver)(nil)
)

// appDriver opens the connections of the application's pool (DB). A
// Driver of its own, so that nothing registered on the process-wide
// "sqlite" driver applies to them and theirs to nothing else.
var appDriver = &msqlite.Driver{}

// appConnector opens connections of the application's pool and registers
// a commit hook on each, so that an application transaction that
// published events wakes the receivers as soon as it commits.
type appConnector struct {
	dsn string
	d   *driver
}

func (c *appConnector) Connect(context.Context) (sqldriver.Conn, error) {
	conn, err := appDriver.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	if hr, ok := conn.(msqlite.HookRegisterer); ok {
		hr.RegisterCommitHook(func() int32 { c.d.nudgeWake(); return 0 })
	}
	return &appConn{Conn: conn, w: c.d.w}, nil
}

// appConn is a connection of the application's pool. Its BEGIN, and its
// writes outside transactions, run holding the writer's lock
// (writer.mu), so that within this process they take SQLite's write lock
// in turn with the driver's own transactions instead of through SQLite's
// busy handler, whose sleeps grow to 100ms and would starve them behind a
// busy writer. The lock is released once BEGIN IMMEDIATE has taken
// SQLite's: the driver's writes then wait for the application's commit
// through SQLite's busy handler, as another process's would, so a
// Publish made while the application holds a transaction open fails
// after the busy give-up rather than deadlocking.
type appConn struct {
	sqldriver.Conn
	w    *writer
	inTx bool
}

var (
	_ sqldriver.ConnBeginTx        = (*appConn)(nil)
	_ sqldriver.ExecerContext      = (*appConn)(nil)
	_ sqldriver.QueryerContext     = (*appConn)(nil)
	_ sqldriver.ConnPrepareContext = (*appConn)(nil)
	_ sqldriver.SessionResetter    = (*appConn)(nil)
	_ sqldriver.Validator          = (*appConn)(nil)
	_ sqldriver.NamedValueChecker  = (*appConn)(nil)
)

// lock takes the writer's lock, giving up when ctx ends. It queues on
// the mutex like the writer goroutine does (a TryLock loop would starve
// behind a writer that relocks at once), and keeps inline writers out
// while it waits.
func (c *appConn) lock(ctx context.Context) error {
	if c.w.mu.TryLock() {
		return nil
	}
	c.w.wantLock.Store(true)
	got := make(chan struct{})
	go func() {
		c.w.mu.Lock()
		close(got)
	}()
	select {
	case <-got:
		c.w.wantLock.Store(false)
		return nil
	case <-ctx.Done():
		go func() {
			<-got
			c.w.mu.Unlock()
		}()
		return ctx.Err()
	}
}

func (c *appConn) BeginTx(ctx context.Context, opts sqldriver.TxOptions) (sqldriver.Tx, error) {
	if err := c.lock(ctx); err != nil {
		return nil, err
	}
	tx, err := c.Conn.(sqldriver.ConnBeginTx).BeginTx(ctx, opts)
	c.w.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c.inTx = true
	return &appTx{Tx: tx, c: c}, nil
}

type appTx struct {
	sqldriver.Tx
	c *appConn
}

func (t *appTx) Commit() error   { t.c.inTx = false; return t.Tx.Commit() }
func (t *appTx) Rollback() error { t.c.inTx = false; return t.Tx.Rollback() }

func (c *appConn) ExecContext(ctx context.Context, query string, args []sqldriver.NamedValue) (sqldriver.Result, error) {
	if !c.inTx {
		if err := c.lock(ctx); err != nil {
			return nil, err
		}
		defer c.w.mu.Unlock()
	}
	return c.Conn.(sqldriver.ExecerContext).ExecContext(ctx, query, args)
}

func (c *appConn) QueryContext(ctx context.Context, query string, args []sqldriver.NamedValue) (sqldriver.Rows, error) {
	return c.Conn.(sqldriver.QueryerContext).QueryContext(ctx, query, args)
}

func (c *appConn) PrepareContext(ctx context.Context, query string) (sqldriver.Stmt, error) {
	return c.Conn.(sqldriver.ConnPrepareContext).PrepareContext(ctx, query)
}

func (c *appConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(sqldriver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *appConn) IsValid() bool {
	if v, ok := c.Conn.(sqldriver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *appConn) CheckNamedValue(nv *sqldriver.NamedValue) error {
	if n, ok := c.Conn.(sqldriver.NamedValueChecker); ok {
		return n.CheckNamedValue(nv)
	}
	return sqldriver.ErrSkip
}

func (c *appConnector) Driver() sqldriver.Driver { return appDriver }

// openAppDB opens the pool DB returns. It connects lazily: a process that
// never asks for it opens no connection.
func (d *driver) openAppDB(synchronous string) {
	bt := fmt.Sprint(busyTimeout.Milliseconds())
	// IMMEDIATE transactions take the write lock at BEGIN, waiting for it
	// through the busy timeout; a deferred one that reads first and writes
	// later fails at once with SQLITE_BUSY when another connection wrote
	// in between, which no retry inside the transaction can fix.
	dsn := d.path + "?_pragma=busy_timeout(" + bt + ")&_pragma=synchronous(" + synchronous + ")&_txlock=immediate"
	d.app = sql.OpenDB(&appConnector{dsn: dsn, d: d})
	// SQLite reports the main file's path made absolute, as a file name
	// given to it.
	if abs, err := filepath.Abs(d.path); err == nil {
		d.absPath = abs
	}
}

// DB returns a connection pool on the bus's own database file, for the
// application's tables and for transactions that publish with PublishTx.
// Its transactions begin IMMEDIATE (they take SQLite's write lock at
// BEGIN), run at the URL's synchronous level, and wait up to 5s for
// another writer's lock. The pool belongs to the driver: it is closed
// when the bus is.
//
// Applications reach it through the bus:
//
//	db, err := sqlite.DB(bus) // or: var db *sql.DB; bus.As(&db)
func (d *driver) DB() *sql.DB { return d.app }

// As implements the escape hatch of ripple.Bus.As: a **sql.DB target
// receives DB().
func (d *driver) As(target any) bool {
	switch p := target.(type) {
	case **sql.DB:
		*p = d.app
		return true
	case *transport.Driver:
		*p = d
		return true
	}
	return false
}

// DB returns the *sql.DB of a bus opened on sqlite:// (see the package
// documentation: "Publishing inside the application's transaction"). bus
// is a *ripple.Bus, or anything with its As method.
func DB(bus interface{ As(any) bool }) (*sql.DB, error) {
	var db *sql.DB
	if bus == nil || !bus.As(&db) || db == nil {
		return nil, errors.New("sqlite transport: DB: the bus does not use the sqlite transport; open it with a sqlite:// URL")
	}
	return db, nil
}

// PublishTx implements transport.TxPublisher: the messages are written by
// tx itself, a *sql.Tx on this bus's database file (from DB, or from any
// database/sql pool opened on the same file), so they are stored if and
// only if tx commits. Duplicates already stored are reported in
// Message.Duplicate; a duplicate committed by another transaction after
// this one's insert is caught by the unique key when tx commits, which
// then fails.
//
// Receivers in this process are woken when a transaction of DB's pool
// commits; a commit through another pool is noticed by the data-version
// poll, within pollInterval.
func (d *driver) PublishTx(ctx context.Context, tx any, msgs []*transport.Message) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	t, ok := tx.(*sql.Tx)
	if !ok || t == nil {
		return fmt.Errorf("sqlite transport: PublishTx takes a *sql.Tx on the bus's database (begin it on sqlite.DB(bus)); got %T", tx)
	}
	if err := d.checkTxFile(ctx, t, "PublishTx"); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	subs, err := txSubs(ctx, t)
	if err != nil {
		return d.txErr(err, "PublishTx")
	}
	now := time.Now().UnixNano()
	for _, m := range msgs {
		if m == nil {
			continue
		}
		if m.ID == "" {
			return errors.New("sqlite transport: message has no ID")
		}
		m.Duplicate = nil
		res, err := t.ExecContext(ctx, insEventCols+insEventRow+insEventTail,
			m.ID, m.Source(), m.Type, m.Key, m.Priority, nanos(m.Time), now, encodeAttrs(m.Attrs), m.Data, eventRunAt(now, m))
		if err != nil {
			return d.txErr(err, "PublishTx")
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if m.Duplicate, err = loadStored(ctx, func(ctx context.Context, args ...any) *sql.Row {
				return t.QueryRowContext(ctx, loadStoredSQL, args...)
			}, m); err != nil {
				return d.txErr(err, "PublishTx")
			}
			continue
		}
		seq, err := res.LastInsertId()
		if err != nil {
			return d.txErr(err, "PublishTx")
		}
		routed := m.Priority != 0 || m.Delay > 0
		runAt, delayed := now, false
		if m.Delay > 0 {
			runAt, delayed = after(now, m.Delay), true
		}
		// As Publish writes (see log.go): a row for every matching
		// ordered subscription, and for every unordered one when the
		// event is delayed or prioritised.
		// One statement for every matching subscription: each statement
		// costs the application's transaction, which holds the write
		// lock, a compilation.
		ids := make([]byte, 0, 64)
		ids = append(ids, '[')
		for _, s := range subs {
			if (s.ordered || routed) && transport.Match(s.pattern, m.Type) {
				if len(ids) > 1 {
					ids = append(ids, ',')
				}
				ids = strconv.AppendInt(ids, s.id, 10)
			}
		}
		ids = append(ids, ']')
		if len(ids) > 2 {
			if _, err := t.ExecContext(ctx, `INSERT INTO deliveries (sub_id, event_seq, state, run_at, priority, key, delayed)
				SELECT s.id, ?1, 0, ?2, ?3, CASE WHEN s.ordered THEN ?4 ELSE '' END, ?5
				FROM subscriptions s WHERE s.id IN (SELECT value FROM json_each(?6))`,
				seq, runAt, m.Priority, m.Key, delayed, string(ids)); err != nil {
				return d.txErr(err, "PublishTx")
			}
		}
	}
	return nil
}

// txSubs reads the subscriptions in tx: under the transaction's write
// lock, so fan-out is exact as for Publish.
func txSubs(ctx context.Context, t *sql.Tx) ([]*subRow, error) {
	rows, err := t.QueryContext(ctx, `SELECT id, name, pattern, ordered FROM subscriptions`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var subs []*subRow
	for rows.Next() {
		s := &subRow{}
		if err := rows.Scan(&s.id, &s.name, &s.pattern, &s.ordered); err != nil {
			return nil, err
		}
		subs = append(subs, s)
	}
	return subs, rows.Err()
}

// checkTxFile refuses a transaction that is over, or on another database
// than the bus's: its events would be stored where no handler looks.
func (d *driver) checkTxFile(ctx context.Context, t *sql.Tx, op string) error {
	rows, err := t.QueryContext(ctx, `PRAGMA database_list`)
	if err != nil {
		if errors.Is(err, sql.ErrTxDone) {
			return fmt.Errorf("sqlite transport: %s: the transaction is already committed or rolled back (%w); call %s before tx.Commit", op, err, op)
		}
		return fmt.Errorf("sqlite transport: %s: tx is not a transaction on a SQLite database (%v); begin it on sqlite.DB(bus)", op, err)
	}
	defer rows.Close()
	var file string
	found := false
	for rows.Next() {
		var seq int
		var name, f string
		if err := rows.Scan(&seq, &name, &f); err != nil {
			return d.txErr(err, "PublishTx")
		}
		if name == "main" {
			file, found = f, true
		}
	}
	if err := rows.Err(); err != nil {
		return d.txErr(err, "PublishTx")
	}
	if !found || file == "" {
		return fmt.Errorf("sqlite transport: %s: tx is on an in-memory or temporary database, not on the bus's file %s; begin it on sqlite.DB(bus)", op, d.path)
	}
	if !d.sameFile(file) {
		return fmt.Errorf("sqlite transport: %s: tx is on database %s, not on the bus's file %s; the event must be written by a transaction on the bus's database (begin it on sqlite.DB(bus))", op, file, d.path)
	}
	return nil
}

func (d *driver) sameFile(file string) bool {
	if file == d.absPath {
		return true
	}
	a, err := os.Stat(file)
	if err != nil {
		return false
	}
	b, err := os.Stat(d.path)
	if err != nil {
		return false
	}
	return os.SameFile(a, b)
}

func (d *driver) txErr(err error, op string) error {
	if errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("sqlite transport: %s: the transaction is already committed or rolled back (%w); call %s before tx.Commit", op, err, op)
	}
	if strings.Contains(err.Error(), "no such table") {
		return fmt.Errorf("sqlite transport: %s: %s has no Ripple tables (%v); begin tx on sqlite.DB(bus)", op, d.path, err)
	}
	return d.storageErr(fmt.Errorf("sqlite transport: %s: %s: %w", op, d.path, err))
}

// nudgeWake asks the poller to look for a commit at once: an application
// transaction is committing.
func (d *driver) nudgeWake() {
	select {
	case d.nudge <- struct{}{}:
	default:
	}
}

// CompleteTx implements transport.TxClaimer: tx, a *sql.Tx on this bus's
// database file (as for PublishTx), marks the idempotency claim of
// (handler, key) done, so that the mark commits with the application's
// writes and events or not at all. A claim already done stores nothing
// and returns an error wrapping transport.ErrAlreadyDone. Transactions of
// DB's pool begin IMMEDIATE, holding SQLite's write lock from BEGIN to
// commit, so two transactions marking the same claim run one after the
// other and the second finds the first's mark.
func (d *driver) CompleteTx(ctx context.Context, tx any, handler, key string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	t, ok := tx.(*sql.Tx)
	if !ok || t == nil {
		return fmt.Errorf("sqlite transport: CompleteTx takes a *sql.Tx on the bus's database (begin it on sqlite.DB(bus)); got %T", tx)
	}
	if err := d.checkTxFile(ctx, t, "CompleteTx"); err != nil {
		return err
	}
	res, err := t.ExecContext(ctx, `INSERT INTO claims (handler, event_id, done, expires_at, updated_at) VALUES (?1, ?2, 1, 0, ?3)
		ON CONFLICT (handler, event_id) DO UPDATE SET done = 1, expires_at = 0, updated_at = excluded.updated_at
		WHERE claims.done = 0`, handler, key, time.Now().UnixNano())
	if err != nil {
		return d.txErr(err, "CompleteTx")
	}
	if n, err := res.RowsAffected(); err != nil {
		return d.txErr(err, "CompleteTx")
	} else if n == 0 {
		return fmt.Errorf("sqlite transport: CompleteTx: handler %q has already done event %q: %w", handler, key, transport.ErrAlreadyDone)
	}
	return nil
}

// Done implements transport.TxClaimer.
func (d *driver) Done(ctx context.Context, handler, key string) (bool, error) {
	var done bool
	err := d.exec(ctx, func(w *writer) error {
		err := w.st.claimState.QueryRowContext(context.Background(), handler, key).Scan(&done)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	}, returnOnCancel)
	return done, err
}
