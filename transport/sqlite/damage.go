package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"time"
)

// This file holds what the driver does about a damaged database file: an
// event row that cannot be read is dead-lettered with SQLite's error so
// that the readable events behind it still flow; Stats and the log say
// that the file is damaged; Check and Salvage serve `ripple check`.

// damageLogEvery bounds how often the damage is logged again.
const damageLogEvery = time.Minute

// markDamaged records that the file was found damaged and logs it, at
// most once per damageLogEvery.
func (d *driver) markDamaged(err error) {
	d.dmu.Lock()
	defer d.dmu.Unlock()
	if d.damaged == nil {
		d.damaged = err
	}
	if time.Since(d.damageLogged) < damageLogEvery {
		return
	}
	d.damageLogged = time.Now()
	d.logger.Error("sqlite transport: the database file is damaged; unreadable events are dead-lettered with SQLite's error and the readable ones keep flowing. Restore the file from a backup, or copy what is readable to a new file with `ripple check --salvage NEW.db`, and never delete its -wal and -shm files",
		"path", d.path, "err", err)
}

// damage returns the error that showed the file damaged, or nil.
func (d *driver) damage() error {
	d.dmu.Lock()
	defer d.dmu.Unlock()
	return d.damaged
}

// unreadableError is returned by a lease that found an event row it
// cannot read. SQLite refuses every further statement of a transaction
// that has met a damaged page, so the lease is rolled back and the
// delivery is dead-lettered by a transaction of its own (deadUnreadable).
type unreadableError struct {
	tok token
	err error
}

func (e *unreadableError) Error() string {
	return fmt.Sprintf("the event (row %d) cannot be read from the damaged database file: %v", e.tok.seq, e.err)
}

func (e *unreadableError) Unwrap() error { return e.err }

// deadUnreadable dead-letters the delivery of an event row that cannot
// be read, with SQLite's error as its last error, in its own transaction.
// It reads the row again first: only a row that still fails is
// dead-lettered.
func (d *driver) deadUnreadable(ctx context.Context, ue *unreadableError) error {
	d.markDamaged(corruptErr(d.path, ue.err))
	// On a read connection: a writer transaction that meets the damage
	// can do nothing more.
	var ok bool
	err := d.rdb.QueryRowContext(ctx, `SELECT length(data) IS NOT NULL OR 1 FROM events WHERE seq = ?`, ue.tok.seq).Scan(&ok)
	if err == nil || !isCorrupt(err) {
		return nil // readable after all, or gone: lease again
	}
	if ue.tok.win != 0 {
		// Taken from the log: the lease that wrote its window was rolled
		// back, so the event is still after the head. It gets a dead row,
		// and this process's scans jump over it.
		err := d.exec(ctx, func(w *writer) error {
			_, err := w.conn.ExecContext(context.Background(), `INSERT OR IGNORE INTO deliveries (sub_id, event_seq, state, run_at, priority, key,
				attempts, failures, first_attempt, done_at, last_error) VALUES (?1, ?2, 3, ?3, 0, '', 1, 1, ?3, ?3, ?4)`,
				ue.tok.sub, ue.tok.seq, w.now, ue.Error())
			w.touch(ue.tok.sub)
			return err
		}, soft)
		if err == nil {
			d.addLogSkip(ue.tok.sub, ue.tok.seq, ue.tok.seq)
		}
		return err
	}
	return d.exec(ctx, func(w *writer) error {
		_, err := w.conn.ExecContext(context.Background(), `UPDATE deliveries SET state = 3, done_at = ?1, lease_until = 0,
			attempts = attempts + 1, failures = failures + 1, last_error = ?2,
			first_attempt = CASE WHEN first_attempt = 0 THEN ?1 ELSE first_attempt END
			WHERE sub_id = ?3 AND event_seq = ?4 AND state IN (0, 1)`, w.now, ue.Error(), ue.tok.sub, ue.tok.seq)
		w.touch(ue.tok.sub)
		return err
	}, soft)
}

// addLogSkip makes this process's log scans of the subscription jump over
// the entries from first to last, which cannot be read.
func (d *driver) addLogSkip(sub, first, last int64) {
	d.dmu.Lock()
	defer d.dmu.Unlock()
	if d.logSkips == nil {
		d.logSkips = map[int64][][2]int64{}
	}
	d.logSkips[sub] = append(d.logSkips[sub], [2]int64{first, last})
}

// unreadableLogError is returned by a lease whose scan of the log met a
// damaged page after seq after (see skipUnreadableLog).
type unreadableLogError struct {
	sub, after int64
	err        error
}

func (e *unreadableLogError) Error() string {
	return fmt.Sprintf("the log after event row %d cannot be read from the damaged database file: %v", e.after, e.err)
}

func (e *unreadableLogError) Unwrap() error { return e.err }

// logErr classifies an error of a log scan that had examined up to seq
// last: a damaged page becomes an unreadableLogError for the current
// lease's subscription.
func (w *writer) logErr(last int64, err error) error {
	if isCorrupt(err) {
		return &unreadableLogError{sub: w.leaseSub, after: last, err: err}
	}
	return err
}

// skipUnreadableLog dead-letters for a subscription the unreadable log
// entries right after ue.after, with SQLite's error (an entry's type
// cannot be read, so whether it matched the pattern is unknown: a damaged
// event is dead-lettered rather than silently skipped), and makes this
// process's log scans of the subscription jump over them. It probes the
// entries one by one on a read connection and stops at the first readable
// one.
func (d *driver) skipUnreadableLog(ctx context.Context, ue *unreadableLogError) error {
	d.markDamaged(corruptErr(d.path, ue.err))
	var maxSeq int64
	if err := d.rdb.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&maxSeq); err != nil {
		return err
	}
	var dead []int64
	head := ue.after
	for seq := ue.after + 1; seq <= maxSeq; seq++ {
		var ok bool
		err := d.rdb.QueryRowContext(ctx, `SELECT length(data) IS NOT NULL OR 1 FROM events WHERE seq = ?`, seq).Scan(&ok)
		if err == nil {
			break
		}
		if errors.Is(err, sql.ErrNoRows) {
			head = seq
			continue
		}
		if !isCorrupt(err) {
			return err
		}
		dead = append(dead, seq)
		head = seq
	}
	if head == ue.after {
		return nil // readable after all: lease again
	}
	msg := ue.err.Error()
	err := d.exec(ctx, func(w *writer) error {
		bg := context.Background()
		for _, seq := range dead {
			if _, err := w.conn.ExecContext(bg, `INSERT OR IGNORE INTO deliveries (sub_id, event_seq, state, run_at, priority, key,
				attempts, failures, first_attempt, done_at, last_error) VALUES (?1, ?2, 3, ?3, 0, '', 1, 1, ?3, ?3, ?4)`,
				ue.sub, seq, w.now, fmt.Sprintf("the event (row %d) cannot be read from the damaged database file: %s", seq, msg)); err != nil {
				return err
			}
		}
		w.touch(ue.sub)
		return nil
	}, soft)
	if err != nil {
		return err
	}
	// The log scans of this subscription jump over the range from now on.
	d.addLogSkip(ue.sub, ue.after+1, head)
	return nil
}

// logSkip returns the first damaged range of the subscription's log
// (see skipUnreadableLog) that ends after seq, or false.
func (d *driver) logSkip(sub, seq int64) ([2]int64, bool) {
	d.dmu.Lock()
	defer d.dmu.Unlock()
	var best [2]int64
	found := false
	for _, r := range d.logSkips[sub] {
		if r[1] > seq && (!found || r[0] < best[0]) {
			best, found = r, true
		}
	}
	return best, found
}

// Check runs SQLite's integrity check on the Ripple database at path,
// opened read-only, and returns the problems it reports (none when the
// file is sound). It does not write to the file.
func Check(ctx context.Context, path string) ([]string, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("sqlite transport: check %s: %w", path, err)
	}
	if err := checkFile(path); err != nil {
		return []string{err.Error()}, nil
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `PRAGMA integrity_check(100)`)
	if err != nil {
		if isCorrupt(err) {
			return []string{err.Error()}, nil
		}
		return nil, fmt.Errorf("sqlite transport: check %s: %w", path, err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return append(problems, err.Error()), nil
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		problems = append(problems, err.Error())
	}
	return problems, nil
}

// SalvageReport says what Salvage copied and what it could not read.
type SalvageReport struct {
	Subscriptions, Events, Deliveries int
	// Unreadable counts event rows that could not be read.
	Unreadable int
}

// Salvage copies what can be read of the Ripple database at src (of this
// build's schema version or an older one) into a new Ripple database at
// dst (which must not exist), of this build's schema: the durable
// subscriptions,
// every readable event and the readable deliveries of those events, and
// the idempotency claims. Events are probed one by one by their sequence
// number, so a damaged page loses only the rows on it.
func Salvage(ctx context.Context, src, dst string) (SalvageReport, error) {
	var rep SalvageReport
	if _, err := os.Stat(dst); err == nil {
		return rep, fmt.Errorf("sqlite transport: salvage: %s exists; name a new file", dst)
	}
	in, err := sql.Open("sqlite", "file:"+src+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return rep, err
	}
	defer in.Close()
	in.SetMaxOpenConns(1)
	out, err := sql.Open("sqlite", dst)
	if err != nil {
		return rep, err
	}
	defer out.Close()
	out.SetMaxOpenConns(1)
	tx, err := out.BeginTx(ctx, nil)
	if err != nil {
		return rep, fmt.Errorf("sqlite transport: salvage: creating %s: %w", dst, err)
	}
	defer tx.Rollback()
	for _, q := range schemaDDL {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return rep, fmt.Errorf("sqlite transport: salvage: creating %s: %w", dst, err)
		}
	}
	// Subscriptions: all of them are needed; without them there is
	// nothing to salvage for.
	var version int64
	if err := in.QueryRowContext(ctx, `SELECT value FROM ripple_meta WHERE key = 'schema_version'`).Scan(&version); err != nil {
		return rep, fmt.Errorf("sqlite transport: salvage: the schema version of %s cannot be read (is it a Ripple database?): %w", src, err)
	}
	if version > schemaVersion {
		return rep, fmt.Errorf("sqlite transport: salvage: %s has schema version %d; this build understands up to %d: use a newer ripple", src, version, schemaVersion)
	}
	// Ephemeral subscriptions belonged to receivers that are gone.
	subsQ := `SELECT id, name, pattern, ordered, lease_ns, created_at, paused, head FROM subscriptions WHERE ephemeral = 0`
	eventsQ := `SELECT id, source, type, key, priority, time, published_at, attrs, data, run_at FROM events WHERE seq = ?`
	// Before schema 4 every event had its deliveries rows: the heads
	// (-1 here) are set to the newest event below.
	switch {
	case version < 2:
		subsQ = `SELECT id, name, pattern, ordered, lease_ns, created_at, 0, -1 FROM subscriptions`
		eventsQ = `SELECT id, '', type, key, priority, time, published_at, attrs, data, 0 FROM events WHERE seq = ?`
	case version < 4:
		subsQ = `SELECT id, name, pattern, ordered, lease_ns, created_at, paused, -1 FROM subscriptions WHERE ephemeral = 0`
		eventsQ = `SELECT id, source, type, key, priority, time, published_at, attrs, data, 0 FROM events WHERE seq = ?`
	}
	srows, err := in.QueryContext(ctx, subsQ)
	if err != nil {
		return rep, fmt.Errorf("sqlite transport: salvage: the subscriptions of %s cannot be read: %w", src, err)
	}
	var maxSub int64
	for srows.Next() {
		var id, lease, created, head int64
		var name, pattern string
		var ordered, paused bool
		if err := srows.Scan(&id, &name, &pattern, &ordered, &lease, &created, &paused, &head); err != nil {
			srows.Close()
			return rep, fmt.Errorf("sqlite transport: salvage: the subscriptions of %s cannot be read: %w", src, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO subscriptions (id, name, pattern, ordered, lease_ns, created_at, paused, head) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			id, name, pattern, ordered, lease, created, paused, head); err != nil {
			srows.Close()
			return rep, err
		}
		maxSub = max(maxSub, id)
		rep.Subscriptions++
	}
	srows.Close()
	if _, err := tx.ExecContext(ctx, `INSERT INTO ripple_meta (key, value) VALUES ('last_sub_id', ?)`, maxSub); err != nil {
		return rep, err
	}
	// The highest event seq: from the events b-tree's right edge, or, if
	// that is damaged, from the deliveries.
	var maxSeq int64
	for _, q := range []string{`SELECT coalesce(max(seq), 0) FROM events`, `SELECT coalesce(max(event_seq), 0) FROM deliveries`} {
		var v int64
		if err := in.QueryRowContext(ctx, q).Scan(&v); err == nil {
			maxSeq = max(maxSeq, v)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE subscriptions SET head = ? WHERE head < 0`, maxSeq); err != nil {
		return rep, err
	}
	ev, err := in.PrepareContext(ctx, eventsQ)
	if err != nil {
		return rep, err
	}
	defer ev.Close()
	dl, err := in.PrepareContext(ctx, `SELECT sub_id, state, run_at, priority, key, attempts, failures, gen, lease_until, first_attempt, done_at, last_error, delayed
		FROM deliveries WHERE sub_id IN (SELECT id FROM subscriptions) AND event_seq = ?`)
	if err != nil {
		return rep, err
	}
	defer dl.Close()
	for seq := int64(1); seq <= maxSeq; seq++ {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		var id, source, typ, key string
		var prio int
		var tm, pub, runAt int64
		var attrs, data []byte
		err := ev.QueryRowContext(ctx, seq).Scan(&id, &source, &typ, &key, &prio, &tm, &pub, &attrs, &data, &runAt)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			rep.Unreadable++
			continue
		}
		if version < 2 {
			source = decodeAttrs(attrs)["source"]
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO events (seq, id, source, type, key, priority, time, published_at, attrs, data, run_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, seq, id, source, typ, key, prio, tm, pub, attrs, data, runAt); err != nil {
			return rep, err
		}
		rep.Events++
		rows, err := dl.QueryContext(ctx, seq)
		if err != nil {
			continue
		}
		for rows.Next() {
			var sub, state, runAt, prio, attempts, failures, gen, leaseUntil, first, doneAt, delayed int64
			var key, lastErr string
			if err := rows.Scan(&sub, &state, &runAt, &prio, &key, &attempts, &failures, &gen, &leaseUntil, &first, &doneAt, &lastErr, &delayed); err != nil {
				break
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO deliveries (sub_id, event_seq, state, run_at, priority, key, attempts, failures, gen, lease_until, first_attempt, done_at, last_error, delayed)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				sub, seq, state, runAt, prio, key, attempts, failures, gen, leaseUntil, first, doneAt, lastErr, delayed); err != nil {
				rows.Close()
				return rep, err
			}
			rep.Deliveries++
		}
		rows.Close()
	}
	if version >= 5 {
		n, err := salvageWindows(ctx, in, tx)
		if err != nil {
			return rep, err
		}
		rep.Deliveries += n
	}
	// Claims are best effort: a handler without its claim runs again,
	// which at-least-once delivery allows.
	if crows, err := in.QueryContext(ctx, `SELECT handler, event_id, done, expires_at, updated_at FROM claims`); err == nil {
		for crows.Next() {
			var h, e string
			var done bool
			var exp, upd int64
			if crows.Scan(&h, &e, &done, &exp, &upd) != nil {
				break
			}
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO claims (handler, event_id, done, expires_at, updated_at) VALUES (?, ?, ?, ?, ?)`,
				h, e, done, exp, upd); err != nil {
				crows.Close()
				return rep, err
			}
		}
		crows.Close()
	}
	if err := tx.Commit(); err != nil {
		return rep, err
	}
	return rep, nil
}

// salvageWindows copies the lease windows of the salvaged subscriptions:
// a closed one as it is (its completed count is history), and the open
// events of an open one as ready rows with their attempt counted, as an
// expired lease would give them back (its receivers are gone). It returns
// how many rows it wrote. Windows it cannot read are left behind: their
// completed events were handled, and their open ones are lost with them,
// as a damaged deliveries row is.
func salvageWindows(ctx context.Context, in *sql.DB, tx *sql.Tx) (int, error) {
	rows, err := in.QueryContext(ctx, `SELECT sub_id, lo, seqs, n, open_n, settled, completed, first_attempt, done_at FROM windows`)
	if err != nil {
		return 0, nil
	}
	defer rows.Close()
	wrote := 0
	for rows.Next() {
		var sub, lo, n, open, settled, completed, first, doneAt int64
		var b []byte
		if rows.Scan(&sub, &lo, &b, &n, &open, &settled, &completed, &first, &doneAt) != nil {
			break
		}
		if b == nil {
			b = []byte{} // a window of one event: its list is empty, not NULL
		}
		if open == 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO windows (sub_id, lo, seqs, n, open_n, settled, completed, lease_until, first_attempt, done_at)
				SELECT ?, ?, ?, ?, 0, ?, ?, 0, ?, ? WHERE EXISTS (SELECT 1 FROM subscriptions WHERE id = ?)`,
				sub, lo, b, n, settled, completed, first, doneAt, sub); err != nil {
				return wrote, err
			}
			continue
		}
		left, err := unsettled(lo, b, settled)
		if err != nil {
			continue
		}
		for _, seq := range left {
			res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO deliveries (sub_id, event_seq, state, run_at, priority, key, attempts, gen, first_attempt)
				SELECT ?1, ?2, 0, ?3, 0, '', 1, 1, ?3 WHERE EXISTS (SELECT 1 FROM subscriptions WHERE id = ?1) AND EXISTS (SELECT 1 FROM events WHERE seq = ?2)`,
				sub, seq, first)
			if err != nil {
				return wrote, err
			}
			if c, _ := res.RowsAffected(); c > 0 {
				wrote++
			}
		}
		if completed > 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO windows (sub_id, lo, seqs, n, open_n, settled, completed, lease_until, first_attempt, done_at)
				SELECT ?, ?, ?, ?, 0, -1, ?, 0, ?, ? WHERE EXISTS (SELECT 1 FROM subscriptions WHERE id = ?)`,
				sub, lo, b, n, completed, first, doneAt, sub); err != nil {
				return wrote, err
			}
		}
	}
	return wrote, nil
}
