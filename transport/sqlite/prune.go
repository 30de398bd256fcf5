package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

const (
	// pruneInterval is the pruner's pace when it is keeping up.
	pruneInterval = 2 * time.Second
	// pruneCatchUp is its pace when the last pass hit a batch limit.
	pruneCatchUp = 100 * time.Millisecond
	// pruneBatch bounds each delete, so that one pass holds the write
	// lock for milliseconds, never long enough to stall publishers.
	pruneBatch = 500
)

type pruneState struct {
	// seq is the events cursor: events still referenced are skipped once
	// per sweep, not re-examined at every pass.
	seq int64
}

// Finished-row statements, one per state, with the state as a literal so
// that SQLite can use the matching partial index.
var pruneSQL = func() map[int]struct{ age, cut, cutoff string } {
	m := map[int]struct{ age, cut, cutoff string }{}
	for _, st := range []int{2, 3} {
		m[st] = struct{ age, cut, cutoff string }{
			age: fmt.Sprintf(`DELETE FROM deliveries WHERE sub_id = ?1 AND state = %[1]d AND event_seq IN
				(SELECT event_seq FROM deliveries WHERE sub_id = ?1 AND state = %[1]d AND done_at < ?2 ORDER BY done_at LIMIT ?3)`, st),
			cutoff: fmt.Sprintf(`SELECT done_at, event_seq FROM deliveries WHERE sub_id = ? AND state = %d
				ORDER BY done_at DESC, event_seq DESC LIMIT 1 OFFSET ?`, st),
			cut: fmt.Sprintf(`DELETE FROM deliveries WHERE sub_id = ?1 AND state = %[1]d AND event_seq IN
				(SELECT event_seq FROM deliveries WHERE sub_id = ?1 AND state = %[1]d
				AND (done_at < ?2 OR (done_at = ?2 AND event_seq <= ?3)) ORDER BY done_at LIMIT ?4)`, st),
		}
	}
	return m
}()

// pruneEventsSQL deletes the events with seqs from ?1 (excluded) to ?2
// published before ?3 that no deliveries row refers to. The IN over
// subscriptions turns the check into one primary-key probe per
// subscription, so deliveries needs no index on event_seq.
const pruneEventsSQL = `DELETE FROM events WHERE seq > ?1 AND seq <= ?2 AND published_at < ?3 AND NOT EXISTS
	(SELECT 1 FROM deliveries WHERE sub_id IN (SELECT id FROM subscriptions) AND event_seq = events.seq)`

// pruneBoundSQL is the highest seq the pruner may delete:
//
//   - never the newest event: SQLite numbers a new row one above the
//     highest in the table, so deleting the newest would hand its seq to
//     the next event, and a process that cached the old event by seq (see
//     writer.recent) would deliver the old contents under the new event;
//   - nothing after an unordered subscription's head: it is still waiting
//     in the log for it (an ordered subscription has rows instead);
//   - nothing at or after the first event of an open lease window.
const pruneBoundSQL = `SELECT min((SELECT coalesce(max(seq), 0) - 1 FROM events),
	coalesce((SELECT min(head) FROM subscriptions WHERE ordered = 0), 9223372036854775807),
	coalesce((SELECT min(lo) - 1 FROM windows WHERE open_n > 0), 9223372036854775807))`

// pruneEventsBatch bounds the seqs one pass examines: one statement
// deletes those no one needs among them, in milliseconds, and a pruner
// that is behind runs a pass every pruneCatchUp, which keeps up with tens
// of thousands of events a second.
const pruneEventsBatch = 2048

// runPrune runs one bounded pruning pass in its own transaction and returns
// when the next pass is due.
func (w *writer) runPrune() time.Duration {
	more := false
	o := &op{ctx: context.Background(), done: make(chan struct{}), soft: true, run: func(w *writer) error {
		var err error
		more, err = w.pruneStep()
		return err
	}}
	if err := w.runTx([]*op{o}); err != nil {
		if isCorrupt(err) {
			w.d.markDamaged(corruptErr(w.d.path, err))
		}
		// Pruning is best effort: the next pass tries again.
		return pruneInterval
	}
	if more {
		return pruneCatchUp
	}
	return pruneInterval
}

func (w *writer) pruneStep() (more bool, err error) {
	bg := context.Background()
	r := w.d.ret
	var subs []int64
	rows, err := w.conn.QueryContext(bg, `SELECT id FROM subscriptions`)
	if err != nil {
		return false, err
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return false, err
		}
		subs = append(subs, id)
	}
	if err := rows.Close(); err != nil {
		return false, err
	}
	for _, id := range subs {
		for _, p := range []struct {
			state int
			count int
			age   time.Duration
		}{{2, r.CompletedCount, r.CompletedAge}, {3, r.DeadCount, r.DeadAge}} {
			m, err := w.pruneFinished(id, p.state, p.count, p.age)
			if err != nil {
				return false, err
			}
			more = more || m
		}
		// Completed history is also in the windows: the rows' count
		// comes off their budget.
		var rowsDone int64
		if err := w.conn.QueryRowContext(bg, `SELECT count(*) FROM deliveries WHERE sub_id = ? AND state = 2`, id).Scan(&rowsDone); err != nil {
			return false, err
		}
		m, err := w.pruneWindows(id, r.CompletedCount, r.CompletedAge, rowsDone)
		if err != nil {
			return false, err
		}
		more = more || m
	}
	if err := w.reapEphemeral(); err != nil {
		return false, err
	}
	m, err := w.pruneEvents()
	if err != nil {
		return false, err
	}
	more = more || m
	res, err := w.conn.ExecContext(bg, `DELETE FROM claims WHERE (handler, event_id) IN
		(SELECT handler, event_id FROM claims WHERE updated_at < ?1 AND (done = 1 OR expires_at < ?2) LIMIT ?3)`,
		w.now-int64(r.DedupWindow), w.now, pruneBatch)
	if err != nil {
		return false, err
	}
	if n, _ := res.RowsAffected(); n == pruneBatch {
		more = true
	}
	return more, nil
}

func (w *writer) pruneFinished(sub int64, state, count int, age time.Duration) (bool, error) {
	bg := context.Background()
	q := pruneSQL[state]
	more := false
	res, err := w.conn.ExecContext(bg, q.age, sub, w.now-int64(age), pruneBatch)
	if err != nil {
		return false, err
	}
	if n, _ := res.RowsAffected(); n == pruneBatch {
		more = true
	}
	var doneAt, seq int64
	err = w.conn.QueryRowContext(bg, q.cutoff, sub, count).Scan(&doneAt, &seq)
	if err == sql.ErrNoRows {
		return more, nil
	}
	if err != nil {
		return false, err
	}
	res, err = w.conn.ExecContext(bg, q.cut, sub, doneAt, seq, pruneBatch)
	if err != nil {
		return false, err
	}
	if n, _ := res.RowsAffected(); n == pruneBatch {
		more = true
	}
	return more, nil
}

// pruneEvents deletes events older than the dedup window that no delivery
// needs any more. It walks events in seq order from a cursor, a batch a
// pass, up to the bound (pruneBoundSQL) and the last event published
// before the window (found by bisecting the log, which is in publish
// order), and starts over from the beginning once it reaches that: the
// events it kept (a delivery row refers to them) are looked at again then.
func (w *writer) pruneEvents() (bool, error) {
	bg := context.Background()
	cutoff := w.now - int64(w.d.ret.DedupWindow)
	var bound int64
	if err := w.conn.QueryRowContext(bg, pruneBoundSQL).Scan(&bound); err != nil {
		return false, err
	}
	first, err := w.firstPublishedAt(cutoff)
	if err != nil {
		return false, err
	}
	bound = min(bound, first-1)
	if bound <= w.prune.seq {
		w.prune.seq = 0 // sweep done; start over next time
		return false, nil
	}
	// This pass takes the pruneEventsBatch seqs from the first event after
	// the cursor (one probe jumps the gaps earlier passes left), or up to
	// the bound.
	var from int64
	err = w.conn.QueryRowContext(bg, `SELECT coalesce(min(seq), 0) FROM events WHERE seq > ?`, w.prune.seq).Scan(&from)
	if err != nil {
		return false, err
	}
	if from == 0 || from > bound {
		w.prune.seq = 0
		return false, nil
	}
	last := min(bound, from+pruneEventsBatch-1)
	if _, err := w.conn.ExecContext(bg, pruneEventsSQL, from-1, last, cutoff); err != nil {
		return false, err
	}
	more := last < bound
	w.prune.seq = last
	if !more {
		w.prune.seq = 0
	}
	return more, nil
}
