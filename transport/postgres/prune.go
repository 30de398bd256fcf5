package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// pruneInterval is the pruner's pace when it is keeping up.
	pruneInterval = time.Second
	// pruneCatchUp is its pace when the last pass hit a batch limit.
	pruneCatchUp = 50 * time.Millisecond
	// pruneBatch bounds each delete, so that one pass holds its locks for
	// milliseconds and leaves autovacuum small chunks.
	pruneBatch = 1000
	// vacuumDead is how many dead rows of the deliveries table make the
	// pruner vacuum it (see vacuumQueue).
	vacuumDead = 2000
)

// vacuumQueue vacuums the deliveries table once it holds vacuumDead dead
// rows. Every lease and every settlement leaves a dead row version, and
// its entry stays in the ready index, where each lease's scan walks over
// it until a vacuum removes it; autovacuum looks at a table at most once a
// minute (autovacuum_naptime), and by then a busy queue has left hundreds
// of thousands of them, making every lease read hundreds of index pages.
// The table holds only undelivered rows and the retained history, so the
// vacuum is small. It skips a table being vacuumed already (SKIP_LOCKED);
// it does not give empty pages at the table's end back to the system
// (TRUNCATE false), which would take a lock that stops every publish and
// lease while it looks; and one run by a role that does not own the table
// does nothing.
func (d *driver) vacuumQueue(ctx context.Context) error {
	var dead int64
	err := d.pool.QueryRow(ctx, `SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relid = $1::regclass`,
		d.qschema+".deliveries").Scan(&dead)
	if err != nil || dead < vacuumDead {
		return err
	}
	_, err = d.pool.Exec(ctx, d.q(`VACUUM (SKIP_LOCKED, TRUNCATE false) @.deliveries`))
	return err
}

// pruneLoop runs the retention pass. Every process runs one, but a pass
// starts only when it takes the schema's history lock without waiting, so
// one process prunes at a time and the others skip.
func (d *driver) pruneLoop() {
	t := time.NewTimer(pruneInterval)
	defer t.Stop()
	for {
		select {
		case <-d.closing:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		go func() {
			select {
			case <-d.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		more, err := d.pruneOnce(ctx)
		if err == nil {
			err = d.vacuumQueue(ctx)
		}
		cancel()
		if err != nil && d.checkOpen() == nil {
			d.log.Debug("postgres transport: retention pass failed; trying again", "schema", d.schema, "err", err)
		}
		if more {
			t.Reset(pruneCatchUp)
		} else {
			t.Reset(pruneInterval)
		}
	}
}

// pruneOnce runs one bounded retention pass in one transaction and reports
// whether it hit a batch limit (more is left to delete).
func (d *driver) pruneOnce(ctx context.Context) (more bool, err error) {
	r := d.ret
	err = pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var got bool
		if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1, -1)", d.lockKey).Scan(&got); err != nil || !got {
			return err
		}
		count := func(tag int64) {
			if tag >= pruneBatch {
				more = true
			}
		}
		for _, p := range []struct {
			state int
			count int
			age   time.Duration
		}{{2, r.CompletedCount, r.CompletedAge}, {3, r.DeadCount, r.DeadAge}} {
			// Age, then count, per subscription: the LATERAL picks each
			// subscription's rows from its own partial index.
			tag, err := tx.Exec(ctx, d.q(`DELETE FROM @.deliveries d USING (
				SELECT x.sub_id, x.event_seq FROM @.subscriptions s CROSS JOIN LATERAL (
					SELECT sub_id, event_seq FROM @.deliveries WHERE sub_id = s.id AND state = $1 AND done_at < @.now_ns() - $2
					ORDER BY done_at LIMIT $3) x) old
				WHERE d.sub_id = old.sub_id AND d.event_seq = old.event_seq`), p.state, int64(p.age), pruneBatch)
			if err != nil {
				return err
			}
			count(tag.RowsAffected())
			tag, err = tx.Exec(ctx, d.q(`DELETE FROM @.deliveries d USING (
				SELECT x.sub_id, x.event_seq FROM @.subscriptions s CROSS JOIN LATERAL (
					SELECT sub_id, event_seq FROM @.deliveries WHERE sub_id = s.id AND state = $1
					ORDER BY done_at DESC, event_seq DESC OFFSET $2 LIMIT $3) x) old
				WHERE d.sub_id = old.sub_id AND d.event_seq = old.event_seq`), p.state, int64(p.count), pruneBatch)
			if err != nil {
				return err
			}
			count(tag.RowsAffected())
		}
		// Events past their dedup window that no delivery needs.
		tag, err := tx.Exec(ctx, d.q(`DELETE FROM @.events WHERE seq IN (
			SELECT e.seq FROM @.events e WHERE e.keep_until < @.now_ns()
				AND NOT EXISTS (SELECT 1 FROM @.deliveries d WHERE d.event_seq = e.seq)
			ORDER BY e.keep_until LIMIT $1)`), pruneBatch)
		if err != nil {
			return err
		}
		count(tag.RowsAffected())
		tag, err = tx.Exec(ctx, d.q(`DELETE FROM @.claims WHERE (handler, event_id) IN (
			SELECT handler, event_id FROM @.claims WHERE updated_at < @.now_ns() - $1 AND (done OR expires_at < @.now_ns()) LIMIT $2)`),
			int64(r.DedupWindow), pruneBatch)
		if err != nil {
			return err
		}
		count(tag.RowsAffected())
		// Ephemeral subscriptions nobody has touched for three leases
		// (their process was killed) go with their deliveries.
		if _, err := tx.Exec(ctx, d.q(`WITH gone AS (
				DELETE FROM @.subscriptions WHERE ephemeral AND touched_at < @.now_ns() - 3 * greatest(lease_ns, 1000000000) RETURNING id)
			DELETE FROM @.deliveries WHERE sub_id IN (SELECT id FROM gone)`)); err != nil {
			return err
		}
		return nil
	})
	return more, err
}
