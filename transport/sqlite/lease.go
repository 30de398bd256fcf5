package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Leases, settlements and lease extensions of deliveries rows.

const leaseSet = `UPDATE deliveries SET state = 1, lease_until = ?1, gen = gen + 1, attempts = attempts + 1,
	first_attempt = CASE WHEN first_attempt = 0 THEN ?2 ELSE first_attempt END
	WHERE sub_id = ?3 AND event_seq IN `

const leaseReturning = ` RETURNING event_seq, attempts, gen, first_attempt, priority`

// The lease statements. The key checks of leaseOrderedSQL name their
// indexes: without statistics the planner would walk the primary key over
// every earlier row of the subscription instead. A row of a key is held back
// by an earlier unsettled row of the key, and by any leased one: Replay and
// Requeue can make an earlier row ready while a later one runs. Each check
// is one probe; rows waiting behind a key's head are held (see
// holdTriggerDDL) and so not in deliveries_ready, which the scan walks.
const (
	leaseExpiredSQL = leaseSet + `(SELECT event_seq FROM deliveries WHERE sub_id = ?3 AND state = 1 AND lease_until < ?2
			ORDER BY lease_until LIMIT ?4)` + leaseReturning
	leaseReadySQL = leaseSet + `(SELECT event_seq FROM deliveries WHERE sub_id = ?3 AND state = 0 AND held = 0 AND run_at <= ?2
			AND priority >= 0 ORDER BY priority DESC, event_seq LIMIT ?4)` + leaseReturning
	// leaseLowSQL leases the ready rows of negative priority, which come
	// after the log's entries (of priority 0).
	leaseLowSQL = leaseSet + `(SELECT event_seq FROM deliveries WHERE sub_id = ?3 AND state = 0 AND held = 0 AND run_at <= ?2
			AND priority < 0 ORDER BY priority DESC, event_seq LIMIT ?4)` + leaseReturning
	leaseOrderedSQL = leaseSet + `(SELECT d.event_seq FROM deliveries d WHERE d.sub_id = ?3 AND d.state = 0 AND d.held = 0 AND d.run_at <= ?2
			AND (d.key = '' OR (NOT EXISTS (SELECT 1 FROM deliveries e INDEXED BY deliveries_key WHERE e.sub_id = ?3 AND e.key = d.key
				AND e.state IN (0, 1) AND e.key <> '' AND e.event_seq < d.event_seq)
			AND NOT EXISTS (SELECT 1 FROM deliveries e INDEXED BY deliveries_key_leased WHERE e.sub_id = ?3 AND e.key = d.key
				AND e.state = 1 AND e.key <> '')))
			ORDER BY d.priority DESC, d.event_seq LIMIT ?4)` + leaseReturning
	// rowsState is what a lease looks at first: when the earliest lease
	// of the subscription ends, whether a waiting row is due, and when the
	// next delayed row is. Each is one probe of a partial index, except
	// the due check, which skips delayed rows ahead of the first due one
	// (the ready lease walks the same rows).
	rowsStateSQL = `SELECT (SELECT min(lease_until) FROM deliveries WHERE sub_id = ?1 AND state = 1),
		EXISTS (SELECT 1 FROM deliveries WHERE sub_id = ?1 AND state = 0 AND held = 0 AND run_at <= ?2),
		(SELECT min(run_at) FROM deliveries WHERE sub_id = ?1 AND state = 0 AND delayed = 1 AND run_at > ?2),
		(SELECT min(lease_until) FROM windows WHERE sub_id = ?1 AND open_n > 0)`
)

// token identifies one lease of one delivery: of a deliveries row, or of
// an event in a lease window (win, the window's first seq, is not 0; bit
// is the event's place in it). A row's gen changes at every lease, so a
// settlement from a lease that expired and was taken over matches no row
// and is ignored; a window's event has its settled bit for that.
type token struct {
	sub, seq, gen int64
	win           int64
	bit           uint8
}

// lease leases up to max rows of the subscription and returns them with the
// time (unix nanos, 0 for none) at which a row might next become
// deliverable without any write: the earliest future run_at or lease end.
func (w *writer) lease(subID int64, pos subPos, ordered bool, max int, lease time.Duration) ([]*transport.Delivery, int64, error) {
	until := w.now + int64(lease)
	w.leaseSub = subID
	bg := context.Background()
	// One read tells which of the lease statements can find anything:
	// each is an UPDATE whose set-up costs more than this look, and in a
	// steady flow most leases take only from the log.
	var leaseEnd, due, winEnd sql.NullInt64
	var readyNow bool
	if until, ok := w.quietNow(subID); ok && !ordered {
		// No rows, and no window ends before until (see quiet.go).
		winEnd = sql.NullInt64{Int64: until, Valid: until != 0}
	} else {
		if err := w.st.rowsState.QueryRowContext(bg, subID, w.now).Scan(&leaseEnd, &readyNow, &due, &winEnd); err != nil {
			return nil, 0, err
		}
		if !ordered && !leaseEnd.Valid && !readyNow && !due.Valid && (!winEnd.Valid || winEnd.Int64 >= w.now) {
			w.setQuiet(subID, winEnd.Int64)
		}
	}
	var out []*transport.Delivery
	var err error
	if winEnd.Valid && winEnd.Int64 < w.now {
		// A window's lease ran out: its open events come back as ready
		// rows, leased below like any others.
		wrote, err := w.expireWindows(subID)
		if err != nil {
			return nil, 0, err
		}
		readyNow = readyNow || wrote
		winEnd = sql.NullInt64{}
	}
	if winEnd.Valid && (!leaseEnd.Valid || winEnd.Int64 < leaseEnd.Int64) {
		leaseEnd = winEnd
	}
	if leaseEnd.Valid && leaseEnd.Int64 < w.now {
		if out, err = w.leaseRows(leaseKindExpired, subID, until, max, nil); err != nil {
			return nil, 0, err
		}
	}
	more := false
	if ordered && len(out) < max && readyNow {
		// An ordered subscription has a row for every event (see
		// log.go): lease the heads of the keys among them.
		ready, err := w.leaseRows(leaseKindOrdered, subID, until, max-len(out), nil)
		if err != nil {
			return nil, 0, err
		}
		sortDeliveries(ready)
		out = append(out, ready...)
	}
	if !ordered && len(out) < max {
		// Ready rows of priority 0 and above, then the log, then ready
		// rows of negative priority.
		if readyNow {
			ready, err := w.leaseRows(leaseKindReady, subID, until, max-len(out), nil)
			if err != nil {
				return nil, 0, err
			}
			// RETURNING gives no order; restore the query's.
			sortDeliveries(ready)
			out = append(out, ready...)
		}
		if len(out) < max {
			if out, more, err = w.leaseFromLog(subID, pos, max-len(out), until, out); err != nil {
				return nil, 0, err
			}
		}
		if len(out) < max && !more && readyNow {
			low, err := w.leaseRows(leaseKindLow, subID, until, max-len(out), nil)
			if err != nil {
				return nil, 0, err
			}
			sortDeliveries(low)
			out = append(out, low...)
		}
	}
	if len(out) > 0 {
		w.leases.Add(1)
		w.leased.Add(int64(len(out)))
		if err := w.loadEvents(out); err != nil {
			return nil, 0, err
		}
		return out, 0, nil
	}
	if more {
		return nil, logNext(w.now), nil
	}
	// Nothing was leased, so nothing changed since rowsState looked.
	next := int64(0)
	if due.Valid {
		next = due.Int64
	}
	if leaseEnd.Valid && (next == 0 || leaseEnd.Int64 < next) {
		// A lease ends when lease_until < now; wake just after it.
		next = leaseEnd.Int64 + 1
	}
	return nil, next, nil
}

// loadEvents fills in the leased deliveries' events: from the cache of
// recent events when there, else read back, with one range scan when the
// missing ones lie close together (a backlog, a subscription reading
// history) and one lookup each otherwise.
func (w *writer) loadEvents(out []*transport.Delivery) error {
	missing := 0
	lo, hi := int64(math.MaxInt64), int64(0)
	for _, d := range out {
		tok := d.Token.(token)
		if m := w.recent.get(tok.seq); m != nil {
			d.ID, d.Type, d.Key, d.Priority = m.ID, m.Type, m.Key, m.Priority
			d.Time = fromNanos(nanos(m.Time))
			// Attrs is shared read-only; Data is the handler's to keep.
			d.Attrs, d.Data = m.Attrs, bytes.Clone(m.Data)
			continue
		}
		missing++
		lo, hi = min(lo, tok.seq), max(hi, tok.seq)
		d.ID = "" // not loaded yet
	}
	// On a file known to be damaged the range could step onto a damaged
	// page between the wanted events, and SQLite then refuses the rest of
	// the transaction: look each one up instead.
	if missing >= 4 && hi-lo < int64(4*missing) && w.d.damage() == nil {
		if err := w.loadRange(out, lo, hi); err != nil {
			if isCorrupt(err) {
				w.d.markDamaged(corruptErr(w.d.path, err))
				return errLeaseAgain
			}
			return err
		}
	}
	for _, d := range out {
		if d.ID != "" {
			continue
		}
		tok := d.Token.(token)
		var attrs []byte
		if err := w.st.loadEvent.QueryRowContext(context.Background(), tok.seq).Scan(&d.ID, &d.Type, &d.Key, &d.Priority, (*nanoTime)(&d.Time), &attrs, &d.Data); err != nil {
			if !isCorrupt(err) {
				return fmt.Errorf("loading event %d: %w", tok.seq, err)
			}
			// A damaged page must not hold back the readable events
			// behind it: the caller dead-letters this one with
			// SQLite's error and leases again.
			return &unreadableError{tok: tok, err: err}
		}
		d.Attrs = decodeAttrs(attrs)
	}
	return nil
}

// errLeaseAgain rolls a lease back to be tried again at once: it met a
// damaged page where the lookups of the next try will find which event it
// holds.
var errLeaseAgain = errors.New("sqlite transport: lease again")

// loadRange reads the events from seq lo to hi in one scan and fills in
// the deliveries of out that are not loaded yet (ID empty).
func (w *writer) loadRange(out []*transport.Delivery, lo, hi int64) error {
	want := make(map[int64]*transport.Delivery, len(out))
	for _, d := range out {
		if d.ID == "" {
			want[d.Token.(token).seq] = d
		}
	}
	rows, err := w.st.loadRange.QueryContext(context.Background(), lo, hi)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		var e transport.Delivery
		var attrs []byte
		if err := rows.Scan(&seq, &e.ID, &e.Type, &e.Key, &e.Priority, (*nanoTime)(&e.Time), &attrs, &e.Data); err != nil {
			return err
		}
		d := want[seq]
		if d == nil {
			continue
		}
		d.ID, d.Type, d.Key, d.Priority, d.Time, d.Data = e.ID, e.Type, e.Key, e.Priority, e.Time, e.Data
		d.Attrs = decodeAttrs(attrs)
	}
	return rows.Err()
}

const loadRangeSQL = `SELECT seq, id, type, key, priority, time, attrs, data FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq`

// Lease statement kinds, indexes into stmts.leaseBuckets.
const (
	leaseKindExpired = iota
	leaseKindReady
	leaseKindOrdered
	leaseKindLow
)

// maxLeaseLimit is the largest LIMIT a lease statement is prepared with;
// larger requests are served by several statements.
const maxLeaseLimit = 64

// leaseStmt returns the statement of kind with LIMIT min(max,
// maxLeaseLimit) written into its text, and that limit. The statement is
// prepared on first use and kept.
func (w *writer) leaseStmt(kind, max int) (*sql.Stmt, int, error) {
	limit := min(max, maxLeaseLimit)
	if st := w.st.leaseBuckets[kind][limit-1]; st != nil {
		return st, limit, nil
	}
	q := [...]string{leaseExpiredSQL, leaseReadySQL, leaseOrderedSQL, leaseLowSQL}[kind]
	q = strings.Replace(q, "LIMIT ?4", "LIMIT "+strconv.Itoa(limit), 1)
	st, err := w.conn.PrepareContext(context.Background(), q)
	if err != nil {
		return nil, 0, err
	}
	w.st.leaseBuckets[kind][limit-1] = st
	return st, limit, nil
}

// leaseRows leases up to max rows, stopping early once a statement finds
// fewer rows than its limit.
func (w *writer) leaseRows(kind int, subID, until int64, max int, out []*transport.Delivery) ([]*transport.Delivery, error) {
	for max > 0 {
		st, limit, err := w.leaseStmt(kind, max)
		if err != nil {
			return nil, err
		}
		before := len(out)
		if out, err = w.leaseOnce(st, subID, until, out); err != nil {
			return nil, err
		}
		if len(out)-before < limit {
			break
		}
		max -= limit
	}
	return out, nil
}

func (w *writer) leaseOnce(st *sql.Stmt, subID, until int64, out []*transport.Delivery) ([]*transport.Delivery, error) {
	rows, err := st.QueryContext(context.Background(), until, w.now, subID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var seq, attempts, gen, first int64
		var prio int
		if err := rows.Scan(&seq, &attempts, &gen, &first, &prio); err != nil {
			return nil, err
		}
		d := &transport.Delivery{
			Attempt:        int(attempts),
			FirstDelivered: fromNanos(first),
			Token:          token{sub: subID, seq: seq, gen: gen},
		}
		d.Priority = prio
		out = append(out, d)
	}
	return out, rows.Err()
}

func sortDeliveries(ds []*transport.Delivery) {
	// Insertion sort: batches are small and this avoids sort's closure.
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && deliveryLess(ds[j], ds[j-1]); j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
}

func deliveryLess(a, b *transport.Delivery) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.Token.(token).seq < b.Token.(token).seq
}

// nanoTime scans a unix-nanosecond column into a time.Time.
type nanoTime time.Time

func (t *nanoTime) Scan(v any) error {
	switch x := v.(type) {
	case int64:
		*t = nanoTime(fromNanos(x))
	case nil:
		*t = nanoTime(time.Time{})
	default:
		return fmt.Errorf("unexpected time value %T", v)
	}
	return nil
}

func tokenOf(d *transport.Delivery) (token, error) {
	if d == nil {
		return token{}, errors.New("sqlite transport: settlement without a delivery")
	}
	t, ok := d.Token.(token)
	if !ok {
		return token{}, fmt.Errorf("sqlite transport: delivery token %T was not issued by this driver", d.Token)
	}
	return t, nil
}

// settle records a batch of outcomes. The completions, usually most of a
// batch, are written with one statement per subscription and run of up to
// maxRows (see completeSQL); the other outcomes one statement each.
func (w *writer) settle(ss []transport.Settlement) error {
	bg := context.Background()
	done := w.doneBuf[:0]
	wins := w.winDoneBuf[:0]
	defer func() { w.doneBuf, w.winDoneBuf = done[:0], wins[:0] }()
	for i := range ss {
		s := &ss[i]
		t, err := tokenOf(s.Delivery)
		if err != nil {
			return err
		}
		if t.win != 0 {
			// A completion makes nothing deliverable (windows are only
			// for unordered handlers), so it wakes no receiver; an
			// event leaving its window may be due at once.
			if s.Outcome == transport.Complete {
				wins = addWinDone(wins, t)
			} else if err := w.settleWindowOne(t, s); err != nil {
				return err
			} else {
				w.touch(t.sub)
			}
			continue
		}
		runAt := after(w.now, s.Delay)
		switch s.Outcome {
		case transport.Complete:
			done = append(done, t)
		case transport.Retry:
			_, err = w.st.retry.ExecContext(bg, runAt, t.sub, t.seq, t.gen, s.Error, w.now)
		case transport.Release:
			_, err = w.st.release.ExecContext(bg, runAt, t.sub, t.seq, t.gen, w.now)
		case transport.Dead:
			_, err = w.st.dead.ExecContext(bg, w.now, t.sub, t.seq, t.gen, s.Error)
		default:
			return fmt.Errorf("sqlite transport: unknown settlement outcome %d", int(s.Outcome))
		}
		if err != nil {
			return err
		}
		// Any settlement can make something deliverable: the row itself
		// (retry, release) or the next row of its key (ordered).
		w.touch(t.sub)
	}
	if err := w.completeWindows(wins); err != nil {
		return err
	}
	for len(done) > 0 {
		// One subscription's run: a batch is normally all one.
		sub, n := done[0].sub, 0
		for n < len(done) && n < maxRows && done[n].sub == sub {
			n++
		}
		n = chunk(n)
		st, err := w.stmt(w.completes, n, completeSQL)
		if err != nil {
			return err
		}
		args := w.args[:0]
		args = append(args, w.now, sub)
		for _, t := range done[:n] {
			args = append(args, t.seq, t.gen)
		}
		_, err = st.ExecContext(bg, args...)
		clear(args)
		w.args = args[:0]
		if err != nil {
			return err
		}
		done = done[n:]
	}
	return nil
}

// completeSQL completes n leased rows of one subscription, each only under
// its own lease generation: parameters ?1 now, ?2 sub_id, then (event_seq,
// gen) pairs. The IN list keeps it to n primary-key probes.
func completeSQL(n int) string {
	var in, gen strings.Builder
	for i := range n {
		s, g := 3+2*i, 4+2*i
		if i > 0 {
			in.WriteString(", ")
		}
		fmt.Fprintf(&in, "?%d", s)
		fmt.Fprintf(&gen, " WHEN ?%d THEN ?%d", s, g)
	}
	return `UPDATE deliveries SET state = 2, done_at = ?1, lease_until = 0
		WHERE sub_id = ?2 AND event_seq IN (` + in.String() + `) AND state = 1 AND gen = CASE event_seq` + gen.String() + ` END`
}

func (w *writer) extend(ds []*transport.Delivery, lease time.Duration) error {
	bg := context.Background()
	until := w.now + int64(lease)
	var last token
	for _, d := range ds {
		t, err := tokenOf(d)
		if err != nil {
			return err
		}
		if t.win != 0 {
			// One update a window: its events share its lease.
			if t.sub != last.sub || t.win != last.win {
				if err := w.extendWindow(t, until); err != nil {
					return err
				}
			}
			last = t
			continue
		}
		if _, err := w.st.extend.ExecContext(bg, until, t.sub, t.seq, t.gen); err != nil {
			return err
		}
	}
	return nil
}

// after returns the time in unix ns that lies d after now, the latest
// time there is when that is past the int64 range: a delay into the year
// 2262 or beyond must not wrap around into the past and run at once.
func after(now int64, d time.Duration) int64 {
	if d <= 0 {
		return now
	}
	if now > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	return now + int64(d)
}
