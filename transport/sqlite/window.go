package sqlite

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Lease windows (schema 5). A lease that takes events from the log writes
// one windows row for up to windowMax of them instead of a deliveries row
// each: the events' seqs (a varint-delta list), a bit per event that is
// settled, how many are still open and how many completed. Completing a
// batch is one update of that row, so a handler's progress through the
// log costs writes per batch, not per event, and a finished window stays
// as a line of history (its completed count) until retention drops it.
//
// Only what is not a plain success leaves the window: a retry, a release
// and a dead letter become a deliveries row of their own (the exception
// rows, which the lease reads before the log), and so do the open events
// of a window whose lease ran out (their process died or hung): they are
// written back as ready rows, with the attempt the window spent counted,
// and the window is closed. A settlement that arrives after that finds its
// bit set and changes nothing, as a row's stale generation does.
//
// A window is keyed by its subscription and the seq of its first event:
// a subscription's head only moves forward, so no two of its windows share
// a first event, and a settlement can never land in another window than
// the one its lease wrote.

// windowMax is the most events one window holds: one bit each in a 64-bit
// integer, which SQLite's | and & work on.
const windowMax = 64

const (
	windowsDDL = `CREATE TABLE windows (
		sub_id INTEGER NOT NULL,
		lo INTEGER NOT NULL,
		seqs BLOB NOT NULL,
		n INTEGER NOT NULL,
		open_n INTEGER NOT NULL,
		settled INTEGER NOT NULL DEFAULT 0,
		completed INTEGER NOT NULL DEFAULT 0,
		lease_until INTEGER NOT NULL,
		first_attempt INTEGER NOT NULL,
		done_at INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (sub_id, lo)) WITHOUT ROWID`
	windowsOpenIndexDDL = `CREATE INDEX windows_open ON windows (sub_id, lease_until) WHERE open_n > 0`
	windowsDoneIndexDDL = `CREATE INDEX windows_done ON windows (sub_id, done_at) WHERE open_n = 0`
	// eventsRoutedIndexDDL lists the delayed and prioritised events, the
	// ones a subscription starting from history needs rows for (see
	// startFromLog): every other event is found in the log.
	eventsRoutedIndexDDL = `CREATE INDEX events_routed ON events (seq) WHERE priority <> 0 OR run_at <> 0`
)

const (
	winInsertSQL = `INSERT INTO windows (sub_id, lo, seqs, n, open_n, lease_until, first_attempt) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)`
	// winCompleteSQL settles the events of mask as completed. The mask
	// check refuses a settlement of an event already settled, or whose
	// window was closed by an expired lease.
	winCompleteSQL = `UPDATE windows SET settled = settled | ?1, open_n = open_n - ?2, completed = completed + ?2, done_at = ?3
		WHERE sub_id = ?4 AND lo = ?5 AND settled & ?1 = 0`
	winSettleOneSQL = `UPDATE windows SET settled = settled | ?1, open_n = open_n - 1, done_at = ?2
		WHERE sub_id = ?3 AND lo = ?4 AND settled & ?1 = 0 RETURNING first_attempt`
	// winExceptionSQL writes the row of an event that leaves its window.
	winExceptionSQL = `INSERT INTO deliveries (sub_id, event_seq, state, run_at, priority, key, attempts, failures, gen,
		first_attempt, done_at, last_error, delayed) VALUES (?1, ?2, ?3, ?4, 0, '', ?5, ?6, 1, ?7, ?8, ?9, ?10)
		ON CONFLICT (sub_id, event_seq) DO NOTHING`
	winExtendSQL  = `UPDATE windows SET lease_until = ?1 WHERE sub_id = ?2 AND lo = ?3 AND open_n > 0`
	winExpiredSQL = `SELECT lo, seqs, settled, first_attempt FROM windows WHERE sub_id = ?1 AND open_n > 0 AND lease_until < ?2
		ORDER BY lease_until LIMIT 64`
	winCloseSQL = `UPDATE windows SET settled = -1, open_n = 0, done_at = ?1 WHERE sub_id = ?2 AND lo = ?3`
)

// encodeSeqs packs ascending seqs as varint deltas from the first.
func encodeSeqs(seqs []int64) []byte {
	b := make([]byte, 0, len(seqs)*2)
	prev := seqs[0]
	for _, s := range seqs[1:] {
		b = binary.AppendUvarint(b, uint64(s-prev))
		prev = s
	}
	return b
}

// decodeSeqs unpacks what encodeSeqs packed, given the first seq.
func decodeSeqs(lo int64, b []byte) ([]int64, error) {
	out := []int64{lo}
	for len(b) > 0 {
		d, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, errors.New("sqlite transport: a lease window's event list is malformed")
		}
		lo += int64(d)
		out = append(out, lo)
		b = b[n:]
	}
	return out, nil
}

// bitOf is an event's bit in its window's settled mask, as SQLite stores
// a 64-bit integer.
func bitOf(i uint8) int64 { return int64(uint64(1) << i) }

// openWindows writes the windows of a lease from the log: seqs (ascending,
// all after the old head) in runs of up to windowMax, and appends their
// deliveries to out.
func (w *writer) openWindows(subID int64, seqs []int64, until int64, out []*transport.Delivery) ([]*transport.Delivery, error) {
	st := w.st.winInsert
	first := fromNanos(w.now)
	w.quietWindow(subID, until)
	for rest := seqs; len(rest) > 0; {
		part := rest[:min(len(rest), windowMax)]
		rest = rest[len(part):]
		if _, err := st.ExecContext(context.Background(), subID, part[0], encodeSeqs(part), len(part), until, w.now); err != nil {
			return nil, err
		}
		for i, seq := range part {
			out = append(out, &transport.Delivery{
				Attempt:        1,
				FirstDelivered: first,
				Token:          token{sub: subID, seq: seq, win: part[0], bit: uint8(i)},
			})
		}
	}
	return out, nil
}

// winDone is one window's share of a batch of completions.
type winDone struct {
	sub, lo int64
	mask    int64
	n       int
}

// completeWindows records the completions of window deliveries: one
// update per window.
func (w *writer) completeWindows(done []winDone) error {
	if len(done) == 0 {
		return nil
	}
	for _, d := range done {
		if _, err := w.st.winComplete.ExecContext(context.Background(), d.mask, d.n, w.now, d.sub, d.lo); err != nil {
			return err
		}
	}
	return nil
}

// addWinDone adds a completed window delivery to done.
func addWinDone(done []winDone, t token) []winDone {
	for i := range done {
		if done[i].sub == t.sub && done[i].lo == t.win {
			done[i].mask |= bitOf(t.bit)
			done[i].n++
			return done
		}
	}
	return append(done, winDone{sub: t.sub, lo: t.win, mask: bitOf(t.bit), n: 1})
}

// settleWindowOne takes an event out of its window with an outcome other
// than success: it becomes an exception row, waiting (retry, release) or
// dead, as a leased row would.
func (w *writer) settleWindowOne(t token, s *transport.Settlement) error {
	bg := context.Background()
	var first int64
	err := w.st.winSettleOne.QueryRowContext(bg, bitOf(t.bit), w.now, t.sub, t.win).Scan(&first)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // settled already, or its lease ran out and it went back
	}
	if err != nil {
		return err
	}
	ins := w.st.winException
	runAt := after(w.now, s.Delay)
	switch s.Outcome {
	case transport.Retry:
		_, err = ins.ExecContext(bg, t.sub, t.seq, 0, runAt, 1, 1, first, 0, s.Error, runAt > w.now)
	case transport.Release:
		_, err = ins.ExecContext(bg, t.sub, t.seq, 0, runAt, 0, 0, first, 0, "", runAt > w.now)
	case transport.Dead:
		_, err = ins.ExecContext(bg, t.sub, t.seq, 3, w.now, 1, 1, first, w.now, s.Error, false)
	default:
		return fmt.Errorf("sqlite transport: unknown settlement outcome %d", int(s.Outcome))
	}
	return err
}

// extendWindows extends the leases of the windows of ds' window
// deliveries, once per window.
func (w *writer) extendWindow(t token, until int64) error {
	_, err := w.st.winExtend.ExecContext(context.Background(), until, t.sub, t.win)
	return err
}

// expireWindows writes the open events of the subscription's windows
// whose lease ran out back as ready rows, their first attempt counted,
// and closes the windows. It reports whether it wrote any row.
func (w *writer) expireWindows(subID int64) (bool, error) {
	bg := context.Background()
	rows, err := w.st.winExpired.QueryContext(bg, subID, w.now)
	if err != nil {
		return false, err
	}
	type expired struct {
		lo, first int64
		open      []int64
	}
	var ws []expired
	for rows.Next() {
		var e expired
		var b []byte
		var settled int64
		if err := rows.Scan(&e.lo, &b, &settled, &e.first); err != nil {
			rows.Close()
			return false, err
		}
		if e.open, err = unsettled(e.lo, b, settled); err != nil {
			rows.Close()
			return false, err
		}
		ws = append(ws, e)
	}
	if err := rows.Close(); err != nil {
		return false, err
	}
	wrote := false
	for _, e := range ws {
		for _, seq := range e.open {
			if _, err := w.st.winException.ExecContext(bg, subID, seq, 0, w.now, 1, 0, e.first, 0, "", false); err != nil {
				return false, err
			}
			wrote = true
		}
		if _, err := w.st.winClose.ExecContext(bg, w.now, subID, e.lo); err != nil {
			return false, err
		}
	}
	return wrote, nil
}

// unsettled returns the seqs of a window's events whose settled bit is
// not set, from its first seq and its packed list.
func unsettled(lo int64, b []byte, settled int64) ([]int64, error) {
	seqs, err := decodeSeqs(lo, b)
	if err != nil {
		return nil, err
	}
	open := seqs[:0]
	for i, s := range seqs {
		if settled&bitOf(uint8(i)) == 0 {
			open = append(open, s)
		}
	}
	return open, nil
}

// openWindowSeqs returns the events of the subscription that are leased
// in an open window and not settled yet.
func (w *writer) openWindowSeqs(subID int64) (map[int64]bool, error) {
	rows, err := w.conn.QueryContext(context.Background(),
		`SELECT lo, seqs, settled FROM windows WHERE sub_id = ? AND open_n > 0`, subID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]bool{}
	for rows.Next() {
		var lo, settled int64
		var b []byte
		if err := rows.Scan(&lo, &b, &settled); err != nil {
			return nil, err
		}
		open, err := unsettled(lo, b, settled)
		if err != nil {
			return nil, err
		}
		for _, s := range open {
			out[s] = true
		}
	}
	return out, rows.Err()
}

// pruneWindows drops a subscription's finished windows older than age,
// and the oldest history beyond count completions, where rowsDone
// completed rows are retained too (the rows are the newer history: a
// completed row is an event that was retried). It reads only the windows
// it drops, oldest first, and trims the count of the last one it reaches.
func (w *writer) pruneWindows(sub int64, count int, age time.Duration, rowsDone int64) (bool, error) {
	bg := context.Background()
	res, err := w.conn.ExecContext(bg, `DELETE FROM windows WHERE sub_id = ?1 AND lo IN
		(SELECT lo FROM windows WHERE sub_id = ?1 AND open_n = 0 AND done_at < ?2 LIMIT ?3)`,
		sub, w.now-int64(age), pruneBatch)
	if err != nil {
		return false, err
	}
	more := false
	if n, _ := res.RowsAffected(); n == pruneBatch {
		more = true
	}
	budget := max(int64(count)-rowsDone, 0)
	var total int64
	if err := w.conn.QueryRowContext(bg, `SELECT coalesce(sum(completed), 0) FROM windows WHERE sub_id = ? AND open_n = 0`, sub).Scan(&total); err != nil {
		return false, err
	}
	excess := total - budget
	if excess <= 0 {
		return more, nil
	}
	rows, err := w.conn.QueryContext(bg, `SELECT lo, completed FROM windows WHERE sub_id = ? AND open_n = 0 ORDER BY done_at, lo`, sub)
	if err != nil {
		return false, err
	}
	var drop []int64
	trim, trimTo := int64(0), int64(-1)
	for excess > 0 && rows.Next() {
		var lo, c int64
		if err := rows.Scan(&lo, &c); err != nil {
			rows.Close()
			return false, err
		}
		if c > excess {
			trim, trimTo = lo, c-excess
			break
		}
		drop = append(drop, lo)
		excess -= c
		if len(drop) == pruneBatch {
			more = true
			break
		}
	}
	if err := rows.Close(); err != nil {
		return false, err
	}
	if trimTo >= 0 {
		if _, err := w.conn.ExecContext(bg, `UPDATE windows SET completed = ? WHERE sub_id = ? AND lo = ?`, trimTo, sub, trim); err != nil {
			return false, err
		}
	}
	for _, lo := range drop {
		if _, err := w.conn.ExecContext(bg, `DELETE FROM windows WHERE sub_id = ? AND lo = ?`, sub, lo); err != nil {
			return false, err
		}
	}
	return more, nil
}

// startFromLog starts a new unordered subscription from history by
// setting its head before the first event published at or after from
// (the log is in publish order), instead of writing a row per retained
// event: the lease then reads those events from the log like any others.
// Only the delayed and prioritised events among them need rows, as they
// got rows at publish only for the subscriptions of their time.
func (w *writer) startFromLog(id int64, pattern string, from time.Time) error {
	bg := context.Background()
	first, err := w.firstPublishedAt(nanos(from))
	if err != nil {
		return err
	}
	if _, err := w.conn.ExecContext(bg, `UPDATE subscriptions SET head = ? WHERE id = ?`, first-1, id); err != nil {
		return err
	}
	rows, err := w.conn.QueryContext(bg, `SELECT seq, type, key, priority, run_at, published_at FROM events
		WHERE (priority <> 0 OR run_at <> 0) AND seq >= ?`, first)
	if err != nil {
		return err
	}
	var dels []delRow
	for rows.Next() {
		var e logEntry
		if err := rows.Scan(&e.seq, &e.typ, &e.key, &e.priority, &e.runAt, &e.published); err != nil {
			rows.Close()
			return err
		}
		if !w.matches(pattern, e.typ) {
			continue
		}
		runAt, delayed := e.published, false
		if e.runAt != 0 {
			runAt, delayed = e.runAt, e.runAt > w.now
		}
		dels = append(dels, delRow{sub: id, seq: e.seq, runAt: runAt, priority: e.priority, delayed: delayed})
	}
	if err := rows.Close(); err != nil {
		return err
	}
	w.touch(id)
	return w.insertDeliveries(dels)
}

// firstPublishedAt returns the seq of the first event published at or
// after from (unix ns), or one past the newest event when there is none.
// It bisects on seq: there is no time index (it would cost every publish
// a page write), and the log is in publish order.
func (w *writer) firstPublishedAt(from int64) (int64, error) {
	bg := context.Background()
	var lo, hi int64
	if err := w.conn.QueryRowContext(bg, `SELECT coalesce(min(seq), 1), coalesce(max(seq), 0) + 1 FROM events`).Scan(&lo, &hi); err != nil {
		return 0, err
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		var seq, pub int64
		err := w.conn.QueryRowContext(bg, `SELECT seq, published_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1`, mid).Scan(&seq, &pub)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			hi = mid
		case err != nil:
			return 0, err
		case pub >= from:
			hi = mid
		default:
			lo = seq + 1
		}
	}
	return lo, nil
}
