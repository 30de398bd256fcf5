package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// schemaVersion is the version of the tables below. A file with a higher
// version was written by a newer Ripple and is refused rather than
// misread; a file with a lower one is migrated in place when it is first
// opened (see migrations).
//
// Version history:
//
//	1  events keyed by id alone
//	2  events keyed by (id, source), the CloudEvents identity; paused,
//	   ephemeral and touched_at on subscriptions; rate_starts for the
//	   shared rate limit
//	3  held on deliveries and the triggers that keep it, so that an
//	   Ordered() lease finds the head of each key without walking the
//	   rows waiting behind it; deliveries_key_leased
//	4  the events table is the log every subscription reads: head on
//	   subscriptions (the log position up to which the subscription has
//	   taken events into deliveries), run_at on events (a delayed
//	   event's due time); a publish writes deliveries rows only for
//	   delayed and prioritised events (see log.go)
//	5  windows: a lease from the log writes one row for up to 64 events,
//	   and completing them is one update of it (see window.go);
//	   events_routed, the delayed and prioritised events, for a
//	   subscription that starts from history
const schemaVersion = 5

// The deliveries table is WITHOUT ROWID and keyed by (sub_id, event_seq):
// the key is what every lookup and the replay upsert use, so clustering on it
// saves one b-tree per insert. States: 0 ready, 1 active (leased), 2 done,
// 3 dead. Every time is unix nanoseconds on the writing process's clock; 0
// means unset. The partial indexes keep each hot query to a range scan of
// only the rows it can return, so their cost does not grow with history.
// Every index is a page written at each commit, so the publish path touches
// as few as possible: events has no time index (pruning and replay walk it
// in seq order, which is publish order), and deliveries_due holds only rows
// scheduled for later (delayed = 1), not every ready row.
var schemaDDL = []string{
	`CREATE TABLE ripple_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID`,
	`CREATE TABLE subscriptions (
		id INTEGER PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		pattern TEXT NOT NULL,
		ordered INTEGER NOT NULL,
		lease_ns INTEGER NOT NULL,
		created_at INTEGER NOT NULL,
		paused INTEGER NOT NULL DEFAULT 0,
		ephemeral INTEGER NOT NULL DEFAULT 0,
		touched_at INTEGER NOT NULL DEFAULT 0,
		head INTEGER NOT NULL DEFAULT 0)`,
	eventsDDL("events") + eventsRunAtCol,
	eventsIdentityDDL,
	`CREATE TABLE deliveries (
		sub_id INTEGER NOT NULL,
		event_seq INTEGER NOT NULL,
		state INTEGER NOT NULL,
		run_at INTEGER NOT NULL,
		priority INTEGER NOT NULL,
		key TEXT NOT NULL,
		attempts INTEGER NOT NULL DEFAULT 0,
		failures INTEGER NOT NULL DEFAULT 0,
		gen INTEGER NOT NULL DEFAULT 0,
		lease_until INTEGER NOT NULL DEFAULT 0,
		first_attempt INTEGER NOT NULL DEFAULT 0,
		done_at INTEGER NOT NULL DEFAULT 0,
		last_error TEXT NOT NULL DEFAULT '',
		delayed INTEGER NOT NULL DEFAULT 0,
		held INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (sub_id, event_seq)) WITHOUT ROWID`,
	readyIndexDDL,
	`CREATE INDEX deliveries_due ON deliveries (sub_id, run_at) WHERE state = 0 AND delayed = 1`,
	`CREATE INDEX deliveries_leased ON deliveries (sub_id, lease_until) WHERE state = 1`,
	`CREATE INDEX deliveries_key ON deliveries (sub_id, key, event_seq) WHERE state IN (0, 1) AND key <> ''`,
	keyLeasedIndexDDL,
	holdTriggerDDL,
	unholdTriggerDDL,
	`CREATE INDEX deliveries_done ON deliveries (sub_id, done_at) WHERE state = 2`,
	`CREATE INDEX deliveries_dead ON deliveries (sub_id, done_at) WHERE state = 3`,
	`CREATE TABLE claims (
		handler TEXT NOT NULL,
		event_id TEXT NOT NULL,
		done INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL,
		PRIMARY KEY (handler, event_id)) WITHOUT ROWID`,
	`CREATE INDEX claims_updated ON claims (updated_at)`,
	rateStartsDDL,
	rateStartsIndexDDL,
	windowsDDL,
	windowsOpenIndexDDL,
	windowsDoneIndexDDL,
	eventsRoutedIndexDDL,
	`INSERT INTO ripple_meta (key, value) VALUES ('schema_version', 5), ('subs_version', 0)`,
}

// eventsDDL creates the events table under the given name. The identity
// (id, source) is unique through eventsIdentityDDL; source is also kept in
// attrs with the other attributes. The column list is left open: the
// caller closes it (schema 4 appends run_at, see eventsRunAtCol).
func eventsDDL(table string) string {
	return `CREATE TABLE ` + table + ` (
		seq INTEGER PRIMARY KEY,
		id TEXT NOT NULL,
		source TEXT NOT NULL,
		type TEXT NOT NULL,
		key TEXT NOT NULL,
		priority INTEGER NOT NULL,
		time INTEGER NOT NULL,
		published_at INTEGER NOT NULL,
		attrs BLOB,
		data BLOB`
}

// eventsRunAtCol closes eventsDDL for schema 4 and later: run_at is a
// delayed event's due time (unix ns), 0 for an event due when published.
// The migration from 3 adds it with ALTER TABLE, which appends it last.
const eventsRunAtCol = `
		, run_at INTEGER NOT NULL DEFAULT 0)`

// eventsIdentityDDL is the publish-dedup key. id comes first so that the
// administration calls that name events by id alone use it too.
const eventsIdentityDDL = `CREATE UNIQUE INDEX events_identity ON events (id, source)`

// rateStartsDDL holds the start times reserved by the shared rate limit
// (transport.RateLimiter), pruned as they leave the window.
const (
	rateStartsDDL      = `CREATE TABLE rate_starts (handler TEXT NOT NULL, at INTEGER NOT NULL)`
	rateStartsIndexDDL = `CREATE INDEX rate_starts_at ON rate_starts (handler, at)`
)

// Held rows (schema 3). Only an Ordered() subscription stores keys, and
// among its unsettled rows (states 0 and 1) of one key only the oldest may
// be leased. A ready row that is not the oldest unsettled row of its key is
// marked held and so leaves deliveries_ready: a lease never walks the rows
// waiting behind a key's head, however many there are. The lease query
// still checks the key itself (held is a hint that keeps blocked rows out
// of the scan, never what makes a lease correct), and the triggers keep the
// one invariant liveness needs: the oldest unsettled row of a key is never
// held.
//
//   - deliveries_hold: a row inserted ready behind an unsettled row of its
//     key is held (one range probe of deliveries_key).
//   - deliveries_unhold: when a row of a key leaves the unsettled states or
//     a leased row goes back to ready, the oldest unsettled row of the key
//     is released (one probe).
//
// Replay and Requeue, which make a settled row unsettled again, clear held
// on the rows they change. Being triggers, they hold for every writer of the
// file, whatever path it takes (publish, PublishTx, administration,
// salvage).
const (
	readyIndexDDL     = `CREATE INDEX deliveries_ready ON deliveries (sub_id, priority DESC, event_seq, run_at) WHERE state = 0 AND held = 0`
	keyLeasedIndexDDL = `CREATE INDEX deliveries_key_leased ON deliveries (sub_id, key) WHERE state = 1 AND key <> ''`
	holdTriggerDDL    = `CREATE TRIGGER deliveries_hold AFTER INSERT ON deliveries
		WHEN NEW.key <> '' AND NEW.state = 0
		BEGIN
			UPDATE deliveries SET held = 1 WHERE sub_id = NEW.sub_id AND event_seq = NEW.event_seq AND EXISTS (
				SELECT 1 FROM deliveries e INDEXED BY deliveries_key WHERE e.sub_id = NEW.sub_id AND e.key = NEW.key
					AND e.state IN (0, 1) AND e.key <> '' AND e.event_seq < NEW.event_seq);
		END`
	unholdTriggerDDL = `CREATE TRIGGER deliveries_unhold AFTER UPDATE OF state ON deliveries
		WHEN OLD.key <> '' AND OLD.state IN (0, 1) AND NEW.state <> OLD.state AND NEW.state <> 1
		BEGIN
			UPDATE deliveries SET held = 0 WHERE sub_id = OLD.sub_id AND state = 0 AND held = 1 AND event_seq = (
				SELECT e.event_seq FROM deliveries e INDEXED BY deliveries_key WHERE e.sub_id = OLD.sub_id AND e.key = OLD.key
					AND e.state IN (0, 1) AND e.key <> '' ORDER BY e.event_seq LIMIT 1);
		END`
)

// migrations[v] moves a file from schema version v to v+1 inside the
// caller's IMMEDIATE transaction.
var migrations = map[int64]func(ctx context.Context, c *sql.Conn) error{
	1: migrate1to2,
	2: migrate2to3,
	3: migrate3to4,
	4: migrate4to5,
}

// migrate4to5 adds the lease windows and the index of routed events. The
// rows of schema 4 keep their meaning: a leased row stays a leased row,
// a completed one history.
func migrate4to5(ctx context.Context, c *sql.Conn) error {
	for _, q := range []string{windowsDDL, windowsOpenIndexDDL, windowsDoneIndexDDL, eventsRoutedIndexDDL} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// migrate3to4 turns the events table into the log: every existing event
// already has its deliveries rows, so every subscription's head starts at
// the newest event, and the rows stay as they are (waiting, leased,
// delayed, completed and dead rows keep their meaning in schema 4).
func migrate3to4(ctx context.Context, c *sql.Conn) error {
	for _, q := range []string{
		`ALTER TABLE subscriptions ADD COLUMN head INTEGER NOT NULL DEFAULT 0`,
		`ALTER TABLE events ADD COLUMN run_at INTEGER NOT NULL DEFAULT 0`,
		`UPDATE subscriptions SET head = (SELECT coalesce(max(seq), 0) FROM events)`,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// migrate2to3 adds held with its index and triggers, and holds the ready
// rows that already wait behind an unsettled row of their key.
func migrate2to3(ctx context.Context, c *sql.Conn) error {
	for _, q := range []string{
		`ALTER TABLE deliveries ADD COLUMN held INTEGER NOT NULL DEFAULT 0`,
		`DROP INDEX deliveries_ready`,
		readyIndexDDL,
		keyLeasedIndexDDL,
		`UPDATE deliveries SET held = 1 WHERE state = 0 AND key <> '' AND EXISTS (
			SELECT 1 FROM deliveries e INDEXED BY deliveries_key WHERE e.sub_id = deliveries.sub_id AND e.key = deliveries.key
				AND e.state IN (0, 1) AND e.key <> '' AND e.event_seq < deliveries.event_seq)`,
		holdTriggerDDL,
		unholdTriggerDDL,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// migrate1to2 rebuilds events with a source column and the (id, source)
// key, reading each event's source from its attributes, and adds the
// columns and table of version 2. The table is rebuilt because SQLite
// cannot drop the UNIQUE constraint of version 1's id column in place.
func migrate1to2(ctx context.Context, c *sql.Conn) error {
	for _, q := range []string{
		eventsDDL("events_v2") + ")",
		`INSERT INTO events_v2 (seq, id, source, type, key, priority, time, published_at, attrs, data)
			SELECT seq, id, '', type, key, priority, time, published_at, attrs, data FROM events`,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	// Sources live in the encoded attributes, which SQL cannot read.
	rows, err := c.QueryContext(ctx, `SELECT seq, attrs FROM events_v2 WHERE attrs IS NOT NULL`)
	if err != nil {
		return err
	}
	type src struct {
		seq    int64
		source string
	}
	var srcs []src
	for rows.Next() {
		var seq int64
		var attrs []byte
		if err := rows.Scan(&seq, &attrs); err != nil {
			rows.Close()
			return err
		}
		if s := decodeAttrs(attrs)["source"]; s != "" {
			srcs = append(srcs, src{seq, s})
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, s := range srcs {
		if _, err := c.ExecContext(ctx, `UPDATE events_v2 SET source = ? WHERE seq = ?`, s.source, s.seq); err != nil {
			return err
		}
	}
	for _, q := range []string{
		`DROP TABLE events`,
		`ALTER TABLE events_v2 RENAME TO events`,
		eventsIdentityDDL,
		`ALTER TABLE subscriptions ADD COLUMN paused INTEGER NOT NULL DEFAULT 0`,
		`ALTER TABLE subscriptions ADD COLUMN ephemeral INTEGER NOT NULL DEFAULT 0`,
		`ALTER TABLE subscriptions ADD COLUMN touched_at INTEGER NOT NULL DEFAULT 0`,
		rateStartsDDL,
		rateStartsIndexDDL,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

const sqliteMagic = "SQLite format 3\x00"

// checkFile refuses a file that is plainly not SQLite before the driver
// opens it: SQLite's own message ("file is not a database") names neither
// the file nor a remedy.
func checkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("sqlite transport: cannot open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("sqlite transport: cannot stat %s: %w", path, err)
	}
	if st.IsDir() {
		return fmt.Errorf("sqlite transport: %s is a directory; the URL must name a database file inside it, for example sqlite://%s/ripple.db", path, strings.TrimSuffix(path, "/"))
	}
	if st.Size() == 0 {
		return nil // an empty file is a new database to SQLite
	}
	hdr := make([]byte, len(sqliteMagic))
	n, _ := io.ReadFull(f, hdr)
	if n < len(hdr) || !bytes.Equal(hdr, []byte(sqliteMagic)) {
		return fmt.Errorf("sqlite transport: %s is not a SQLite database (its first bytes are not the SQLite header; it may be a text file, another format, or a damaged database); point the URL at a new file, which Ripple will create, or restore this one from a backup", path)
	}
	return nil
}

func fileErr(path string, err error) error {
	msg := err.Error()
	if e := storageErr(path, err); e != err {
		return e
	}
	switch {
	case strings.Contains(msg, "not a database"), strings.Contains(msg, "corrupt"):
		return corruptErr(path, err)
	case strings.Contains(msg, "unable to open"):
		return fmt.Errorf("sqlite transport: cannot open %s (%v); check that its directory exists and is writable", path, err)
	}
	return fmt.Errorf("sqlite transport: %s: %w", path, err)
}

// initSchema verifies that the file is a Ripple database of a version this
// build understands, creating the schema in a new or empty file. It looks
// before it writes, so a foreign database is refused without being touched
// (not even switched to WAL). Creation runs in one IMMEDIATE transaction that
// looks again, so two processes opening a new file at once cannot both
// create it.
func initSchema(ctx context.Context, c *sql.Conn, path string) error {
	if _, err := classify(ctx, c, path); err != nil {
		return err
	}
	var mode string
	if err := c.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode); err != nil {
		return fileErr(path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("sqlite transport: %s: cannot switch the database to WAL mode (journal_mode is %s); use a file on a local, writable file system", path, mode)
	}
	for attempt := 0; ; attempt++ {
		err := createSchema(ctx, c, path)
		if err == nil {
			return nil
		}
		if isBusy(err) && attempt < 5 {
			continue
		}
		return err
	}
}

// classify returns the schema version of a Ripple database this build can
// open (migrating it if older), 0 for an empty database, or why it is
// neither.
func classify(ctx context.Context, c *sql.Conn, path string) (version int64, err error) {
	rows, err := c.QueryContext(ctx, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		return 0, fileErr(path, err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return 0, fileErr(path, err)
		}
		tables = append(tables, n)
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return 0, fileErr(path, err)
	}
	rows.Close()
	if len(tables) == 0 {
		return 0, nil
	}
	hasMeta := false
	for _, t := range tables {
		if t == "ripple_meta" {
			hasMeta = true
		}
	}
	if !hasMeta {
		shown := tables
		if len(shown) > 5 {
			shown = append(shown[:5:5], "…")
		}
		return 0, fmt.Errorf("sqlite transport: %s is a SQLite database but not a Ripple database (it has tables %s and no ripple_meta table); Ripple needs a file of its own: point the URL at a new file", path, strings.Join(shown, ", "))
	}
	var v int64
	if err := c.QueryRowContext(ctx, "SELECT value FROM ripple_meta WHERE key = 'schema_version'").Scan(&v); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("sqlite transport: %s has a ripple_meta table without a schema_version row; it is not a usable Ripple database: point the URL at a new file", path)
		}
		return 0, fileErr(path, err)
	}
	if v > schemaVersion {
		return 0, fmt.Errorf("sqlite transport: %s was written by a newer Ripple (schema version %d; this build understands up to %d); upgrade Ripple to open it", path, v, schemaVersion)
	}
	if v < 1 {
		return 0, fmt.Errorf("sqlite transport: %s has invalid schema version %d; it is not a usable Ripple database", path, v)
	}
	return v, nil
}

func createSchema(ctx context.Context, c *sql.Conn, path string) error {
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fileErr(path, err)
	}
	commit := false
	defer func() {
		if !commit {
			_, _ = c.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	v, err := classify(ctx, c, path)
	if err != nil {
		return err
	}
	if v == 0 {
		for _, stmt := range schemaDDL {
			if _, err := c.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("sqlite transport: %s: creating the schema: %w", path, err)
			}
		}
	}
	if v > 0 && v < schemaVersion {
		for ; v < schemaVersion; v++ {
			if err := migrations[v](ctx, c); err != nil {
				if isBusy(err) {
					return err
				}
				return fmt.Errorf("sqlite transport: %s: migrating the schema from version %d to %d: %w (the file is unchanged)", path, v, v+1, err)
			}
		}
		if _, err := c.ExecContext(ctx, `UPDATE ripple_meta SET value = ? WHERE key = 'schema_version'`, schemaVersion); err != nil {
			return fileErr(path, err)
		}
	}
	if _, err := c.ExecContext(ctx, "COMMIT"); err != nil {
		return fileErr(path, err)
	}
	commit = true
	return nil
}

// isBusy reports whether err is SQLITE_BUSY or SQLITE_LOCKED (primary
// codes 5 and 6): the lock belongs to someone else and waiting will help.
func isBusy(err error) bool {
	var ce interface{ Code() int }
	if errors.As(err, &ce) {
		c := ce.Code() & 0xff
		return c == 5 || c == 6
	}
	return false
}
