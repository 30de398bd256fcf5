package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ripplehq/ripple/transport"
)

// Stats implements transport.Inspector. Each count is an index range scan
// over one state of one subscription, all in one statement so the numbers
// come from a single snapshot.
func (d *driver) Stats(ctx context.Context) ([]transport.Stats, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := d.pool.Query(ctx, d.q(`SELECT s.name, s.pattern, s.paused, @.now_ns(),
		(SELECT count(*) FROM @.deliveries WHERE sub_id = s.id AND state = 0 AND run_at <= @.now_ns()),
		(SELECT min(run_at) FROM @.deliveries WHERE sub_id = s.id AND state = 0 AND run_at <= @.now_ns()),
		(SELECT count(*) FROM @.deliveries WHERE sub_id = s.id AND state = 0 AND run_at > @.now_ns()),
		(SELECT count(*) FROM @.deliveries WHERE sub_id = s.id AND state = 1),
		(SELECT count(*) FROM @.deliveries WHERE sub_id = s.id AND state = 2),
		(SELECT count(*) FROM @.deliveries WHERE sub_id = s.id AND state = 3),
		(SELECT coalesce(sum(failures), 0) FROM @.deliveries WHERE sub_id = s.id)
		FROM @.subscriptions s ORDER BY s.name`))
	if err != nil {
		return nil, d.wrap(err)
	}
	defer rows.Close()
	var out []transport.Stats
	for rows.Next() {
		var s transport.Stats
		var now int64
		var oldest *int64
		if err := rows.Scan(&s.Handler, &s.Pattern, &s.Paused, &now, &s.Waiting, &oldest, &s.Delayed, &s.Active, &s.Completed, &s.Dead, &s.Failed); err != nil {
			return nil, d.wrap(err)
		}
		if oldest != nil && *oldest < now {
			s.OldestWaiting = time.Duration(now - *oldest)
		}
		out = append(out, s)
	}
	return out, d.wrap(rows.Err())
}

func notFound(handler string) error {
	return fmt.Errorf("postgres transport: handler %q: %w (no subscription of that name)", handler, transport.ErrNotFound)
}

// subID returns the id of the handler's subscription.
func (d *driver) subID(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, handler string) (int64, error) {
	var id int64
	err := q.QueryRow(ctx, d.q(`SELECT id FROM @.subscriptions WHERE name = $1`), handler).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, notFound(handler)
	}
	if err != nil {
		return 0, d.wrap(err)
	}
	return id, nil
}

// DeadLetters implements transport.DeadLetterQueue: oldest dead first. A
// limit of zero or less lists them all.
func (d *driver) DeadLetters(ctx context.Context, handler string, limit int) ([]transport.DeadLetter, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	id, err := d.subID(ctx, d.pool, handler)
	if err != nil {
		return nil, err
	}
	var lim *int64
	if limit > 0 {
		l := int64(limit)
		lim = &l
	}
	rows, err := d.pool.Query(ctx, d.q(`SELECT e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data,
		d.attempts, d.last_error, d.first_attempt, d.done_at
		FROM @.deliveries d JOIN @.events e ON e.seq = d.event_seq
		WHERE d.sub_id = $1 AND d.state = 3 ORDER BY d.done_at, d.event_seq LIMIT $2`), id, lim)
	if err != nil {
		return nil, d.wrap(err)
	}
	defer rows.Close()
	var out []transport.DeadLetter
	for rows.Next() {
		dl := transport.DeadLetter{Handler: handler}
		var prio, attempts int32
		var t, first, dead int64
		var attrs []byte
		if err := rows.Scan(&dl.ID, &dl.Type, &dl.Key, &prio, &t, &attrs, &dl.Data,
			&attempts, &dl.Error, &first, &dead); err != nil {
			return nil, d.wrap(err)
		}
		dl.Priority, dl.Attempts = int(prio), int(attempts)
		dl.Time, dl.FirstAttempt, dl.DeadAt = fromNanos(t), fromNanos(first), fromNanos(dead)
		dl.Attrs = decodeAttrs(attrs)
		out = append(out, dl)
	}
	return out, d.wrap(rows.Err())
}

// deadOp runs q ($1 sub id, $2 event ids or NULL for all) over the
// handler's dead letters and returns how many rows it changed.
func (d *driver) deadOp(ctx context.Context, handler string, ids []string, q string, wake bool) (int, error) {
	if err := d.checkOpen(); err != nil {
		return 0, err
	}
	id, err := d.subID(ctx, d.pool, handler)
	if err != nil {
		return 0, err
	}
	var arg any
	if len(ids) > 0 {
		arg = ids
	}
	tag, err := d.pool.Exec(ctx, d.q(q), id, arg)
	if err != nil {
		return 0, d.wrap(err)
	}
	if wake {
		d.notify(ctx, id)
	}
	return int(tag.RowsAffected()), nil
}

// Requeue implements transport.DeadLetterQueue. Requeued events start with
// a fresh attempt budget and are deliverable at once.
func (d *driver) Requeue(ctx context.Context, handler string, ids []string) (int, error) {
	return d.deadOp(ctx, handler, ids, `UPDATE @.deliveries SET state = 0, run_at = @.now_ns(), delayed = false, attempts = 0,
		first_attempt = 0, done_at = 0, lease_until = 0
		WHERE sub_id = $1 AND state = 3 AND ($2::text[] IS NULL OR event_seq IN (SELECT x.event_seq FROM @.deliveries x JOIN @.events e ON e.seq = x.event_seq
			WHERE x.sub_id = $1 AND x.state = 3 AND e.id = ANY($2)))`, true)
}

// Purge implements transport.DeadLetterQueue. The events themselves go
// when the pruner finds no delivery left that needs them.
func (d *driver) Purge(ctx context.Context, handler string, ids []string) (int, error) {
	return d.deadOp(ctx, handler, ids, `DELETE FROM @.deliveries
		WHERE sub_id = $1 AND state = 3 AND ($2::text[] IS NULL OR event_seq IN (SELECT x.event_seq FROM @.deliveries x JOIN @.events e ON e.seq = x.event_seq
			WHERE x.sub_id = $1 AND x.state = 3 AND e.id = ANY($2)))`, false)
}

// Replay implements transport.Replayer. Every retained event matching the
// handler's pattern published at or after since that the handler has
// finished (completed, or dead-lettered), or never had, becomes
// deliverable to it again with a fresh attempt budget. Rows waiting,
// delayed or leased are left as they are.
func (d *driver) Replay(ctx context.Context, handler string, since time.Time) (int, error) {
	if err := d.checkOpen(); err != nil {
		return 0, err
	}
	var n int64
	var id int64
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var err error
		if id, err = d.subID(ctx, tx, handler); err != nil {
			return err
		}
		// The history lock keeps the pruner from deleting an event that
		// a delivery is being made for.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, -1)", d.lockKey); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, d.q(`INSERT INTO @.deliveries (sub_id, event_seq, state, run_at, priority, key)
			SELECT s.id, e.seq, 0, @.now_ns(), e.priority, CASE WHEN s.ordered THEN e.key ELSE '' END
			FROM @.events e JOIN @.subscriptions s ON s.id = $1 AND e.type ~ s.regex
			WHERE e.published_at >= $2 ORDER BY e.seq
			ON CONFLICT (sub_id, event_seq) DO UPDATE SET state = 0, run_at = excluded.run_at, delayed = false, attempts = 0,
				first_attempt = 0, done_at = 0, lease_until = 0, last_error = ''
			WHERE @.deliveries.state IN (2, 3)`), id, sinceNanos(since))
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		if errors.Is(err, transport.ErrNotFound) {
			return 0, err
		}
		return 0, d.wrap(err)
	}
	d.notify(ctx, id)
	return int(n), nil
}

// Claim implements transport.Claimer. The upsert takes the claim only when
// there is none or it has expired without being done; PostgreSQL's row
// lock on the claim serialises concurrent claims, so exactly one wins.
func (d *driver) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	if err := d.checkOpen(); err != nil {
		return 0, err
	}
	if lease <= 0 {
		lease = defaultLease
	}
	var state int32
	err := d.pool.QueryRow(ctx, d.q(`WITH up AS (
			INSERT INTO @.claims (handler, event_id, done, expires_at, updated_at) VALUES ($1, $2, false, @.now_ns() + $3, @.now_ns())
			ON CONFLICT (handler, event_id) DO UPDATE SET expires_at = excluded.expires_at, updated_at = excluded.updated_at
			WHERE NOT @.claims.done AND @.claims.expires_at <= excluded.updated_at
			RETURNING 1)
		SELECT CASE WHEN EXISTS (SELECT 1 FROM up) THEN 1
			WHEN coalesce((SELECT done FROM @.claims WHERE handler = $1 AND event_id = $2), false) THEN 2 ELSE 3 END`),
		handler, eventID, int64(lease)).Scan(&state)
	if err != nil {
		return 0, d.wrap(err)
	}
	switch state {
	case 1:
		return transport.Claimed, nil
	case 2:
		return transport.Done, nil
	}
	return transport.Busy, nil
}

// Finish implements transport.Claimer. A done claim is remembered for the
// dedup window; a dropped claim can be taken again at once.
func (d *driver) Finish(ctx context.Context, handler, eventID string, success bool) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	var err error
	if success {
		_, err = d.pool.Exec(ctx, d.q(`INSERT INTO @.claims (handler, event_id, done, expires_at, updated_at) VALUES ($1, $2, true, 0, @.now_ns())
			ON CONFLICT (handler, event_id) DO UPDATE SET done = true, updated_at = excluded.updated_at`), handler, eventID)
	} else {
		_, err = d.pool.Exec(ctx, d.q(`DELETE FROM @.claims WHERE handler = $1 AND event_id = $2 AND NOT done`), handler, eventID)
	}
	return d.wrap(err)
}

// Unsubscribe implements transport.Unsubscriber: the subscription row, its
// deliveries and its idempotency claims go in one transaction. Events no
// longer needed by any delivery are left to the pruner.
func (d *driver) Unsubscribe(ctx context.Context, handler string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	var id int64
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var err error
		if id, err = d.subID(ctx, tx, handler); err != nil {
			return err
		}
		for _, st := range []struct {
			q   string
			arg any
		}{
			{`DELETE FROM @.deliveries WHERE sub_id = $1`, id},
			{`DELETE FROM @.subscriptions WHERE id = $1`, id},
			{`DELETE FROM @.claims WHERE handler = $1`, handler},
		} {
			if _, err := tx.Exec(ctx, d.q(st.q), st.arg); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, transport.ErrNotFound) {
			return err
		}
		return d.wrap(err)
	}
	d.notify(ctx, id)
	return nil
}

// Reserve implements transport.RateLimiter with a sliding window kept in
// the database: the reservations of a handler are rows, taken one at a
// time under a transaction-level advisory lock of the handler. A new
// reservation starts no earlier than now and no earlier than per after the
// n-th most recent one, so no window of length per holds more than n
// starts, across every process.
func (d *driver) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	if err := d.checkOpen(); err != nil {
		return 0, err
	}
	if n <= 0 || per <= 0 {
		return 0, nil
	}
	var wait int64
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", d.schema+"/rate/"+handler); err != nil {
			return err
		}
		return tx.QueryRow(ctx, d.q(`WITH nth AS (
				SELECT start_ns FROM @.rate_slots WHERE handler = $1 ORDER BY start_ns DESC OFFSET $2 - 1 LIMIT 1
			), slot AS (
				SELECT greatest(@.now_ns(), coalesce((SELECT start_ns FROM nth) + $3, 0)) AS start_ns
			), del AS (
				DELETE FROM @.rate_slots WHERE handler = $1 AND start_ns < @.now_ns() - $3 - $3
			), ins AS (
				INSERT INTO @.rate_slots (handler, start_ns) SELECT $1, start_ns FROM slot
			)
			SELECT start_ns - @.now_ns() FROM slot`), handler, int64(n), int64(per)).Scan(&wait)
	})
	if err != nil {
		return 0, d.wrap(err)
	}
	return time.Duration(wait), nil
}

// Pause implements transport.Pauser: the flag is on the subscription row,
// which every lessor reads, so every process stops handing out deliveries
// at its next look (within the safety poll).
func (d *driver) Pause(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, true)
}

// Resume implements transport.Pauser.
func (d *driver) Resume(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, false)
}

func (d *driver) setPaused(ctx context.Context, handler string, paused bool) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	var id int64
	err := d.pool.QueryRow(ctx, d.q(`UPDATE @.subscriptions SET paused = $2 WHERE name = $1 RETURNING id`), handler, paused).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return notFound(handler)
	}
	if err != nil {
		return d.wrap(err)
	}
	if !paused {
		d.notify(ctx, id)
	}
	return nil
}
