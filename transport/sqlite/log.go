package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// The log: a publish writes each event once, into events, whose seq is the
// log position. Each unordered subscription keeps head, the position up
// to which it has taken events; the events after head that match its
// pattern wait in the log, where they cost no write per subscription. A
// receiver takes them in the lease's own transaction: one scan of the log
// from head (the pattern is matched in Go, cached by type), one windows
// row for up to 64 of them (see window.go) and one update of head,
// however many events.
//
// Delayed and prioritised events are exceptions: Publish gives them a
// row for every matching unordered subscription at once (the lease reads
// ready rows before the log, so a high priority overtakes the backlog),
// and the log scan skips them. An ordered subscription gets a row for
// every event at publish, with its key (the held-row triggers keep a
// key's later events behind its head), and does not read the log; its
// head only matters when it stops being ordered (see switchOrdered).

const (
	// logChunk is how many log entries one scan statement reads.
	logChunk = 256
	// logScanMax bounds the log entries one lease examines, so that a
	// subscription whose pattern matches little of a long log does not
	// hold the write lock for a long scan: it resumes at the next lease.
	logScanMax = 8 * logChunk
)

const (
	logScanSQL = `SELECT seq, type, key, priority, run_at, published_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 256`
	logGetSQL  = `SELECT seq, type, key, priority, run_at, published_at FROM events WHERE seq = ?`
	setHeadSQL = `UPDATE subscriptions SET head = ?1 WHERE id = ?2 AND head < ?1`
)

// eventRunAt is the run_at column of m's log entry: its due time when it
// is delayed, else 0.
func eventRunAt(now int64, m *transport.Message) int64 {
	if m.Delay > 0 {
		return after(now, m.Delay)
	}
	return 0
}

// subPos is what a lease needs to know of its subscription's row.
type subPos struct {
	head    int64
	pattern string
}

// logEntry is one scanned log entry.
type logEntry struct {
	seq, runAt, published int64
	typ, key              string
	priority              int
}

// routed reports whether the entry got its unordered subscriptions' rows
// when it was published (delayed or prioritised).
func (e *logEntry) routed() bool { return e.priority != 0 || e.runAt != 0 }

// matches caches transport.Match by pattern and type.
func (w *writer) matches(pattern, typ string) bool {
	k := pattern + "\x00" + typ
	if m, ok := w.patMatch[k]; ok {
		return m
	}
	m := transport.Match(pattern, typ)
	if len(w.patMatch) > 4096 {
		clear(w.patMatch)
	}
	w.patMatch[k] = m
	return m
}

// scanLog calls take for the log entries after from in order, up to
// logScanMax of them, until take returns false. It returns the seq of the
// last entry examined (from if none) and whether the scan reached the end
// of the log.
func (w *writer) scanLog(from int64, take func(e *logEntry) bool) (last int64, atEnd bool, err error) {
	last = from
	for scanned := 0; scanned < logScanMax; {
		skip, damaged := w.d.logSkip(w.leaseSub, last)
		if damaged && skip[0] <= last+1 {
			last = skip[1] // jump over a range found damaged
			continue
		}
		var n int
		var more bool
		if damaged && skip[0]-last-1 <= logChunk {
			// Close to a damaged range: look the entries up one by one,
			// as a range scan would step onto the damaged page (and
			// SQLite then refuses the rest of the transaction).
			n, more, err = w.scanPoints(&last, skip[0], take)
		} else {
			n, more, err = w.scanRange(&last, take)
		}
		if err != nil {
			return 0, false, w.logErr(last, err)
		}
		scanned += n
		switch {
		case !more:
			return last, false, nil
		case damaged && n < logChunk:
			last = skip[1]
		case n < logChunk:
			return last, true, nil
		}
	}
	return last, false, nil
}

// scanRange reads up to logChunk entries after *last in one statement.
// more is false once take has declined.
func (w *writer) scanRange(last *int64, take func(e *logEntry) bool) (n int, more bool, err error) {
	// seq >= last+1 rather than seq > last: SQLite seeks to the bound,
	// and last's own page may be one found damaged.
	rows, err := w.st.logScan.QueryContext(context.Background(), *last+1)
	if err != nil {
		return 0, false, err
	}
	defer rows.Close()
	more = true
	for rows.Next() {
		var e logEntry
		if err := rows.Scan(&e.seq, &e.typ, &e.key, &e.priority, &e.runAt, &e.published); err != nil {
			return n, false, err
		}
		n++
		*last = e.seq
		if !take(&e) {
			more = false
			break
		}
	}
	if err := rows.Err(); err != nil {
		return n, false, err
	}
	return n, more, rows.Close()
}

// scanPoints reads the entries from *last+1 to stop-1 one by one.
func (w *writer) scanPoints(last *int64, stop int64, take func(e *logEntry) bool) (n int, more bool, err error) {
	for seq := *last + 1; seq < stop; seq++ {
		var e logEntry
		err := w.st.logGet.QueryRowContext(context.Background(), seq).Scan(&e.seq, &e.typ, &e.key, &e.priority, &e.runAt, &e.published)
		*last = seq
		n++
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			*last = seq - 1
			return n, false, err
		}
		if !take(&e) {
			return n, false, nil
		}
	}
	return n, true, nil
}

// setHead moves the subscription's head forward to seq.
func (w *writer) setHead(subID, seq int64) error {
	_, err := w.st.setHead.ExecContext(context.Background(), seq, subID)
	return err
}

// leaseFromLog leases up to max matching entries of the log after the
// subscription's head, moving head past every entry it examined. more
// reports that it stopped at its scan bound with entries left to examine.
func (w *writer) leaseFromLog(subID int64, pos subPos, max int, until int64, out []*transport.Delivery) (_ []*transport.Delivery, more bool, err error) {
	seqs := w.logSeqs[:0]
	defer func() { w.logSeqs = seqs[:0] }()
	// The entries this process published are in the recent-events cache:
	// walk them there, and scan the file only from the first one it does
	// not hold (usually finding nothing more).
	from := pos.head
	for n := 0; len(seqs) < max && n < logScanMax; n++ {
		typ, routed, ok := w.recent.peek(from + 1)
		if !ok {
			break
		}
		from++
		if !routed && w.matches(pos.pattern, typ) {
			seqs = append(seqs, from)
		}
	}
	last, atEnd := from, false
	if len(seqs) < max {
		last, atEnd, err = w.scanLog(from, func(e *logEntry) bool {
			if !e.routed() && w.matches(pos.pattern, e.typ) {
				seqs = append(seqs, e.seq)
			}
			return len(seqs) < max
		})
		if err != nil {
			return nil, false, err
		}
	}
	if last != pos.head {
		if err := w.setHead(subID, last); err != nil {
			return nil, false, err
		}
	}
	more = !atEnd && len(seqs) < max
	if len(seqs) == 0 {
		return out, more, nil
	}
	out, err = w.openWindows(subID, seqs, until, out)
	return out, more, err
}

// switchOrdered brings a subscription whose ordering changed to the form
// of its new kind. One that becomes ordered takes every log entry after
// its head into waiting rows, with keys (an ordered subscription reads
// rows, not the log); one that stops being ordered already has a row for
// every event, so its head moves to the newest event.
func (w *writer) switchOrdered(id int64, spec transport.SubscriptionSpec) error {
	bg := context.Background()
	var head int64
	if err := w.conn.QueryRowContext(bg, `SELECT head FROM subscriptions WHERE id = ?`, id).Scan(&head); err != nil {
		return err
	}
	if spec.Ordered {
		w.leaseSub = id
		pos := subPos{head: head, pattern: spec.Pattern}
		for {
			more, err := w.materialize(id, pos)
			if err != nil || !more {
				return err
			}
			if err := w.conn.QueryRowContext(bg, `SELECT head FROM subscriptions WHERE id = ?`, id).Scan(&pos.head); err != nil {
				return err
			}
		}
	}
	_, err := w.conn.ExecContext(bg, `UPDATE subscriptions SET head = (SELECT coalesce(max(seq), 0) FROM events) WHERE id = ?`, id)
	return err
}

// materialize takes the matching log entries after a subscription's head
// into waiting rows (at most logScanMax entries examined), with their keys.
// more reports entries left to examine.
func (w *writer) materialize(subID int64, pos subPos) (more bool, err error) {
	dels := w.pub.dels[:0]
	defer func() { clear(dels); w.pub.dels = dels[:0] }()
	last, atEnd, err := w.scanLog(pos.head, func(e *logEntry) bool {
		if w.matches(pos.pattern, e.typ) {
			runAt, delayed := e.published, false
			if e.runAt != 0 {
				runAt, delayed = e.runAt, e.runAt > w.now
			}
			dels = append(dels, delRow{sub: subID, seq: e.seq, runAt: runAt, priority: e.priority, key: e.key, delayed: delayed})
		}
		return true
	})
	if err != nil {
		return false, err
	}
	if last == pos.head {
		return false, nil
	}
	if err := w.insertDeliveries(dels); err != nil {
		return false, err
	}
	return !atEnd, w.setHead(subID, last)
}

// logBacklog counts the entries of the log after a subscription's head
// that it will take: waiting (due) and delayed, and the publish time of
// the oldest due one (0 for none). An unordered subscription skips the
// entries that got rows at publish.
func logBacklog(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, head int64, pattern string, ordered bool, now int64) (waiting, delayed, oldest int64, err error) {
	rows, err := q.QueryContext(ctx, `SELECT type, priority <> 0 OR run_at <> 0, run_at > ?2, count(*), min(published_at)
		FROM events WHERE seq > ?1 GROUP BY 1, 2, 3`, head, now)
	if err != nil {
		return 0, 0, 0, err
	}
	defer rows.Close()
	match := map[string]bool{}
	for rows.Next() {
		var typ string
		var routed, later bool
		var n, pub int64
		if err := rows.Scan(&typ, &routed, &later, &n, &pub); err != nil {
			return 0, 0, 0, err
		}
		if routed && !ordered {
			continue
		}
		m, ok := match[typ]
		if !ok {
			m = transport.Match(pattern, typ)
			match[typ] = m
		}
		if !m {
			continue
		}
		if later {
			delayed += n
			continue
		}
		waiting += n
		if oldest == 0 || pub < oldest {
			oldest = pub
		}
	}
	return waiting, delayed, oldest, rows.Err()
}

// logNext is the wake-up hint of a lease that stopped at its scan bound:
// look again at once.
func logNext(now int64) int64 { return now + int64(time.Microsecond) }
