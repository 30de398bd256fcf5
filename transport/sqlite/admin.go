package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Stats implements transport.Inspector. Each count of rows is an index
// range scan over one state of one subscription; the events still waiting
// in the log after a subscription's head are counted by type. All is read
// in one read transaction, so the numbers come from a single snapshot.
func (d *driver) Stats(ctx context.Context) ([]transport.Stats, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	tx, err := d.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, d.wrap(err)
	}
	defer tx.Rollback()
	now := time.Now().UnixNano()
	rows, err := tx.QueryContext(ctx, `SELECT s.name, s.pattern, s.head, s.ordered,
		(SELECT count(*) FROM deliveries WHERE sub_id = s.id AND state = 0 AND run_at <= ?1),
		(SELECT min(run_at) FROM deliveries WHERE sub_id = s.id AND state = 0 AND run_at <= ?1),
		(SELECT count(*) FROM deliveries WHERE sub_id = s.id AND state = 0 AND delayed = 1 AND run_at > ?1),
		(SELECT count(*) FROM deliveries WHERE sub_id = s.id AND state = 1) +
			(SELECT coalesce(sum(open_n), 0) FROM windows WHERE sub_id = s.id AND open_n > 0),
		(SELECT count(*) FROM deliveries WHERE sub_id = s.id AND state = 2) +
			(SELECT coalesce(sum(completed), 0) FROM windows WHERE sub_id = s.id),
		(SELECT count(*) FROM deliveries WHERE sub_id = s.id AND state = 3),
		(SELECT coalesce(sum(failures), 0) FROM deliveries WHERE sub_id = s.id),
		s.paused
		FROM subscriptions s ORDER BY s.name`, now)
	if err != nil {
		return nil, d.wrap(err)
	}
	var out []transport.Stats
	var heads []int64
	var ordered []bool
	for rows.Next() {
		var s transport.Stats
		var oldest sql.NullInt64
		var head int64
		var ord bool
		if err := rows.Scan(&s.Handler, &s.Pattern, &head, &ord, &s.Waiting, &oldest, &s.Delayed, &s.Active, &s.Completed, &s.Dead, &s.Failed, &s.Paused); err != nil {
			rows.Close()
			return nil, d.wrap(err)
		}
		if oldest.Valid && oldest.Int64 < now {
			s.OldestWaiting = time.Duration(now - oldest.Int64)
		}
		out = append(out, s)
		heads = append(heads, head)
		ordered = append(ordered, ord)
	}
	if err := rows.Close(); err != nil {
		return nil, d.wrap(err)
	}
	for i := range out {
		s := &out[i]
		if ordered[i] {
			continue // rows for every event: counted above
		}
		waiting, delayed, oldest, err := logBacklog(ctx, tx, heads[i], s.Pattern, ordered[i], now)
		if err != nil {
			return nil, d.wrap(err)
		}
		s.Waiting += waiting
		s.Delayed += delayed
		if oldest > 0 && oldest < now && time.Duration(now-oldest) > s.OldestWaiting {
			s.OldestWaiting = time.Duration(now - oldest)
		}
	}
	if err := d.damage(); err != nil {
		// The counts are right, but the file needs attention: say so
		// wherever Stats is read (the CLI, health checks, metrics).
		return out, err
	}
	return out, nil
}

func (d *driver) checkOpen() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return d.errClosed()
	}
	return nil
}

func (d *driver) wrap(err error) error {
	if err == nil {
		return nil
	}
	return d.storageErr(fmt.Errorf("sqlite transport: %s: %w", d.path, err))
}

// storageErr classifies err (see storageErr) and remembers a damaged file.
func (d *driver) storageErr(err error) error {
	err = storageErr(d.path, err)
	if errors.Is(err, transport.ErrCorrupt) {
		d.markDamaged(err)
	}
	return err
}

func notFound(handler string) error {
	return fmt.Errorf("sqlite transport: handler %q: %w (no subscription of that name)", handler, transport.ErrNotFound)
}

// DeadLetters implements transport.DeadLetterQueue: oldest dead first. A
// limit of zero or less lists them all.
func (d *driver) DeadLetters(ctx context.Context, handler string, limit int) ([]transport.DeadLetter, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	var id int64
	if err := d.rdb.QueryRowContext(ctx, `SELECT id FROM subscriptions WHERE name = ?`, handler).Scan(&id); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, notFound(handler)
		}
		return nil, d.wrap(err)
	}
	if limit <= 0 {
		limit = -1
	}
	out, err := d.deadLetters(ctx, handler, id, limit)
	if err != nil && isCorrupt(err) {
		// Some event rows cannot be read: list them one by one, the
		// unreadable ones without their event (their Error says why).
		out, err = d.deadLettersByRow(ctx, handler, id, limit)
	}
	return out, d.wrap(err)
}

func (d *driver) deadLetters(ctx context.Context, handler string, id int64, limit int) ([]transport.DeadLetter, error) {
	rows, err := d.rdb.QueryContext(ctx, `SELECT e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data,
		d.attempts, d.last_error, d.first_attempt, d.done_at
		FROM deliveries d JOIN events e ON e.seq = d.event_seq
		WHERE d.sub_id = ? AND d.state = 3 ORDER BY d.done_at, d.event_seq LIMIT ?`, id, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []transport.DeadLetter
	for rows.Next() {
		dl := transport.DeadLetter{Handler: handler}
		var attrs []byte
		if err := rows.Scan(&dl.ID, &dl.Type, &dl.Key, &dl.Priority, (*nanoTime)(&dl.Time), &attrs, &dl.Data,
			&dl.Attempts, &dl.Error, (*nanoTime)(&dl.FirstAttempt), (*nanoTime)(&dl.DeadAt)); err != nil {
			return nil, err
		}
		dl.Attrs = decodeAttrs(attrs)
		out = append(out, dl)
	}
	return out, rows.Err()
}

// deadLettersByRow is DeadLetters on a damaged file: the deliveries
// first, then each event on its own, so an unreadable event costs only
// its own fields.
func (d *driver) deadLettersByRow(ctx context.Context, handler string, id int64, limit int) ([]transport.DeadLetter, error) {
	rows, err := d.rdb.QueryContext(ctx, `SELECT event_seq, attempts, last_error, first_attempt, done_at
		FROM deliveries WHERE sub_id = ? AND state = 3 ORDER BY done_at, event_seq LIMIT ?`, id, limit)
	if err != nil {
		return nil, err
	}
	type row struct {
		seq int64
		dl  transport.DeadLetter
	}
	var rs []row
	for rows.Next() {
		r := row{dl: transport.DeadLetter{Handler: handler}}
		if err := rows.Scan(&r.seq, &r.dl.Attempts, &r.dl.Error, (*nanoTime)(&r.dl.FirstAttempt), (*nanoTime)(&r.dl.DeadAt)); err != nil {
			rows.Close()
			return nil, err
		}
		rs = append(rs, r)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	out := make([]transport.DeadLetter, 0, len(rs))
	for _, r := range rs {
		dl := r.dl
		var attrs []byte
		err := d.rdb.QueryRowContext(ctx, `SELECT id, type, key, priority, time, attrs, data FROM events WHERE seq = ?`, r.seq).
			Scan(&dl.ID, &dl.Type, &dl.Key, &dl.Priority, (*nanoTime)(&dl.Time), &attrs, &dl.Data)
		if err == nil {
			dl.Attrs = decodeAttrs(attrs)
		}
		out = append(out, dl)
	}
	return out, nil
}

type subInfo struct {
	id      int64
	pattern string
	ordered bool
}

func (w *writer) subByName(handler string) (subInfo, error) {
	var s subInfo
	err := w.conn.QueryRowContext(context.Background(), `SELECT id, pattern, ordered FROM subscriptions WHERE name = ?`, handler).
		Scan(&s.id, &s.pattern, &s.ordered)
	if errors.Is(err, sql.ErrNoRows) {
		return s, notFound(handler)
	}
	return s, err
}

// deadOp runs q over the handler's dead letters: all of them, or those of
// the given event ids. q's parameters are ?1 now, ?2 sub_id, ?3 event id.
func (d *driver) deadOp(ctx context.Context, handler string, ids []string, all, one string) (int, error) {
	var total int
	err := d.exec(ctx, func(w *writer) error {
		total = 0
		s, err := w.subByName(handler)
		if err != nil {
			return err
		}
		bg := context.Background()
		if len(ids) == 0 {
			res, err := w.conn.ExecContext(bg, all, w.now, s.id)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			total = int(n)
		} else {
			st, err := w.conn.PrepareContext(bg, one)
			if err != nil {
				return err
			}
			defer st.Close()
			for _, id := range ids {
				res, err := st.ExecContext(bg, w.now, s.id, id)
				if err != nil {
					return err
				}
				n, _ := res.RowsAffected()
				total += int(n)
			}
		}
		w.touch(s.id)
		return nil
	}, 0)
	return total, err
}

const requeueSet = `UPDATE deliveries SET state = 0, run_at = ?1, delayed = 0, attempts = 0, first_attempt = 0, done_at = 0, lease_until = 0, held = 0
	WHERE sub_id = ?2 AND state = 3`

// Requeue implements transport.DeadLetterQueue. Requeued events start with
// a fresh attempt budget and are deliverable at once.
func (d *driver) Requeue(ctx context.Context, handler string, ids []string) (int, error) {
	return d.deadOp(ctx, handler, ids, requeueSet,
		requeueSet+` AND event_seq IN (SELECT seq FROM events WHERE id = ?3)`)
}

// Purge implements transport.DeadLetterQueue. The events themselves go
// when the pruner finds no delivery left that needs them.
func (d *driver) Purge(ctx context.Context, handler string, ids []string) (int, error) {
	const del = `DELETE FROM deliveries WHERE ?1 IS NOT NULL AND sub_id = ?2 AND state = 3`
	return d.deadOp(ctx, handler, ids, del, del+` AND event_seq IN (SELECT seq FROM events WHERE id = ?3)`)
}

// Replay implements transport.Replayer. Every retained event matching the
// handler's pattern published at or after since that the handler has
// finished (completed, or dead-lettered, which takes it out of the
// dead-letter queue) becomes deliverable to it again with a fresh attempt
// budget, and so do events it never had (it did not exist yet) as long as
// the event is still retained. Rows waiting, delayed or leased are left as
// they are: they are delivered anyway.
func (d *driver) Replay(ctx context.Context, handler string, since time.Time) (int, error) {
	var total int
	err := d.exec(ctx, func(w *writer) error {
		s, err := w.subByName(handler)
		if err != nil {
			return err
		}
		total, err = w.backfill(s, since)
		return err
	}, 0)
	return total, err
}

// backfill makes every retained event of s's pattern published at or
// after since that s has finished, or never had, deliverable to s with a
// fresh attempt budget, and returns how many. Replay and a subscription
// starting from history use it.
func (w *writer) backfill(s subInfo, since time.Time) (int, error) {
	total := 0
	err := func() error {
		bg := context.Background()
		up, err := w.conn.PrepareContext(bg, `INSERT INTO deliveries (sub_id, event_seq, state, run_at, priority, key)
			VALUES (?1, ?2, 0, ?3, ?4, ?5)
			ON CONFLICT (sub_id, event_seq) DO UPDATE SET state = 0, run_at = excluded.run_at, delayed = 0, attempts = 0,
				first_attempt = 0, done_at = 0, lease_until = 0, last_error = '', held = 0
			WHERE deliveries.state IN (2, 3)`)
		if err != nil {
			return err
		}
		defer up.Close()
		type ev struct {
			seq  int64
			key  string
			prio int
		}
		// Only the log up to an unordered subscription's head: the
		// entries after it are still waiting to be taken, and are
		// delivered anyway. (An ordered one has rows for them.)
		head := int64(math.MaxInt64)
		var leased map[int64]bool
		if !s.ordered {
			if err := w.conn.QueryRowContext(bg, `SELECT head FROM subscriptions WHERE id = ?`, s.id).Scan(&head); err != nil {
				return err
			}
			// Events leased in a window have no row: leave them to
			// their lease, as a leased row is left.
			if leased, err = w.openWindowSeqs(s.id); err != nil {
				return err
			}
		}
		cursor := int64(0)
		for {
			// A walk in seq order: there is no time index (it would cost
			// every publish a page write), and replay is rare.
			rows, err := w.conn.QueryContext(bg, `SELECT seq, type, key, priority, published_at >= ? FROM events
				WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1000`, nanos(since), cursor, head)
			if err != nil {
				return err
			}
			var evs []ev
			n := 0
			for rows.Next() {
				var e ev
				var typ string
				var inRange bool
				if err := rows.Scan(&e.seq, &typ, &e.key, &e.prio, &inRange); err != nil {
					rows.Close()
					return err
				}
				n++
				cursor = e.seq
				if inRange && !leased[e.seq] && transport.Match(s.pattern, typ) {
					evs = append(evs, e)
				}
			}
			if err := rows.Close(); err != nil {
				return err
			}
			for _, e := range evs {
				key := ""
				if s.ordered {
					key = e.key
				}
				res, err := up.ExecContext(bg, s.id, e.seq, w.now, e.prio, key)
				if err != nil {
					return err
				}
				c, _ := res.RowsAffected()
				total += int(c)
			}
			if n < 1000 {
				break
			}
		}
		w.touch(s.id)
		return nil
	}()
	return total, err
}

// Claim implements transport.Claimer. The upsert takes the claim only when
// there is none or it has expired without being done; the writer runs it
// under SQLite's write lock, so concurrent claims (from any process) are
// serialised and exactly one wins.
func (d *driver) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	if lease <= 0 {
		lease = defaultLease
	}
	var r transport.ClaimResult
	err := d.exec(ctx, func(w *writer) error {
		bg := context.Background()
		res, err := w.st.claim.ExecContext(bg, handler, eventID, w.now+int64(lease), w.now)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			r = transport.Claimed
			return nil
		}
		var done bool
		if err := w.st.claimState.QueryRowContext(bg, handler, eventID).Scan(&done); err != nil {
			return err
		}
		r = transport.Busy
		if done {
			r = transport.Done
		}
		return nil
	}, returnOnCancel)
	return r, err
}

// Finish implements transport.Claimer. A done claim is remembered for the
// dedup window; a dropped claim can be taken again at once.
func (d *driver) Finish(ctx context.Context, handler, eventID string, success bool) error {
	return d.exec(ctx, func(w *writer) error {
		var err error
		if success {
			_, err = w.st.finishOK.ExecContext(context.Background(), handler, eventID, w.now)
		} else {
			_, err = w.st.finishFail.ExecContext(context.Background(), handler, eventID)
		}
		return err
	}, returnOnCancel)
}

// Unsubscribe implements transport.Unsubscriber: the subscription row, its
// deliveries and its idempotency claims go in one transaction, and the
// subscription version is bumped so every process stops fanning out to it.
// Events no longer needed by any delivery are left to the pruner.
func (d *driver) Unsubscribe(ctx context.Context, handler string) error {
	return d.exec(ctx, func(w *writer) error {
		s, err := w.subByName(handler)
		if err != nil {
			return err
		}
		return w.dropSub(s.id, handler)
	}, 0)
}
