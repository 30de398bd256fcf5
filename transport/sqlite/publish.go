package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/ripplehq/ripple/transport"
)

// The publish path: each event once into the log (see log.go), with the
// rows of delayed and prioritised events, in shared multi-row statements.

// maxRows bounds the rows of one multi-row INSERT; longer runs are split
// into power-of-two chunks, so a handful of cached statements serve every
// batch size.
const maxRows = 64

// pubScratch holds the publish path's buffers, reused across transactions.
type pubScratch struct {
	msgs []*transport.Message
	seqs map[string]int64 // identity key → seq, for the rows just inserted
	dels []delRow
}

type delRow struct {
	sub, seq, runAt int64
	priority        int
	key             string
	delayed         bool
}

const (
	insEventCols = `INSERT INTO events (id, source, type, key, priority, time, published_at, attrs, data, run_at) VALUES `
	insEventRow  = `(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	insEventTail = ` ON CONFLICT (id, source) DO NOTHING`
	// loadStoredSQL reads the event kept under an identity, for
	// Message.Duplicate.
	loadStoredSQL   = `SELECT type, key, priority, time, attrs, data FROM events WHERE id = ? AND source = ?`
	insDeliveryCols = `INSERT OR IGNORE INTO deliveries (sub_id, event_seq, state, run_at, priority, key, delayed) VALUES `
	insDeliveryRow  = `(?, ?, 0, ?, ?, ?, ?)`
)

// multiRow returns INSERT head + n × row + tail.
func multiRow(head, row, tail string, n int) string {
	var b strings.Builder
	b.WriteString(head)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	b.WriteString(tail)
	return b.String()
}

// chunk returns the size of the next multi-row statement for rem rows.
func chunk(rem int) int {
	n := maxRows
	for n > rem {
		n >>= 1
	}
	return n
}

func (w *writer) stmt(cache map[int]*sql.Stmt, n int, q func(int) string) (*sql.Stmt, error) {
	if st := cache[n]; st != nil {
		return st, nil
	}
	st, err := w.conn.PrepareContext(context.Background(), q(n))
	if err != nil {
		return nil, err
	}
	cache[n] = st
	return st, nil
}

func insEventsSQL(n int) string {
	return multiRow(insEventCols, insEventRow, insEventTail+` RETURNING seq, id, source`, n)
}

func insDeliveriesSQL(n int) string { return multiRow(insDeliveryCols, insDeliveryRow, "", n) }

// publish stores the messages of a run of publish operations: each new
// event once, in the log, plus a delivery row for every unordered
// subscription a delayed or prioritised event matches. A
// remembered id (publish deduplication), including one repeated within the
// run, stores nothing.
func (w *writer) publish(ops []*op) error {
	ms := w.pub.msgs[:0]
	defer func() { clear(ms); w.pub.msgs = ms[:0] }()
	for _, o := range ops {
		for _, m := range o.msgs {
			if m == nil {
				continue
			}
			if m.ID == "" {
				return errors.New("sqlite transport: message has no ID")
			}
			m.Duplicate = nil // a batch that failed runs again
			ms = append(ms, m)
		}
	}
	dels := w.pub.dels[:0]
	defer func() { clear(dels); w.pub.dels = dels[:0] }()
	add := func(m *transport.Message, seq int64) error {
		subs, err := w.matching(m.Type)
		if err != nil {
			return err
		}
		routed := m.Priority != 0 || m.Delay > 0
		runAt, delayed := w.now, false
		if m.Delay > 0 {
			runAt, delayed = after(runAt, m.Delay), true
		}
		for _, s := range subs {
			// The event is in the log, which every unordered
			// subscription reads (see log.go): such a subscription gets
			// a row now only for a delayed or prioritised event. An
			// ordered subscription gets a row for every event, with its
			// key, in publish order, so that the held-row triggers keep
			// a key's later events behind its head.
			w.touch(s.id)
			switch {
			case s.ordered:
				dels = append(dels, delRow{sub: s.id, seq: seq, runAt: runAt, priority: m.Priority, key: m.Key, delayed: delayed})
			case routed:
				dels = append(dels, delRow{sub: s.id, seq: seq, runAt: runAt, priority: m.Priority, delayed: delayed})
			}
		}
		e := cachedEvent{seq: seq, typ: m.Type, routed: routed}
		if len(subs) > 0 && !delayed {
			// A copy: the publisher may reuse its message after Publish.
			c := *m
			c.Attrs, c.Data = maps.Clone(m.Attrs), bytes.Clone(m.Data)
			e.msg = &c
		}
		// Without msg, the log's entry for the leases that walk the cache.
		w.fresh = append(w.fresh, e)
		return nil
	}
	if len(ms) == 1 {
		// One row needs no RETURNING: the result says it all, cheaper.
		m := ms[0]
		res, err := w.st.insEvent.ExecContext(context.Background(), m.ID, m.Source(), m.Type, m.Key, m.Priority, nanos(m.Time), w.now, encodeAttrs(m.Attrs), m.Data, eventRunAt(w.now, m))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if err := w.markDuplicate(m); err != nil {
				return err
			}
		} else {
			seq, err := res.LastInsertId()
			if err != nil {
				return err
			}
			if err := add(m, seq); err != nil {
				return err
			}
		}
	} else if len(ms) > 1 {
		if err := w.insertEvents(ms); err != nil {
			return err
		}
		for _, m := range ms {
			k := transport.IdentityKey(m.Source(), m.ID)
			seq, ok := w.pub.seqs[k]
			if !ok {
				// Remembered, or an earlier message of this run had the
				// identity.
				if err := w.markDuplicate(m); err != nil {
					return err
				}
				continue
			}
			delete(w.pub.seqs, k)
			if err := add(m, seq); err != nil {
				return err
			}
		}
	}
	return w.insertDeliveries(dels)
}

// insertEvents inserts ms and leaves the seq of each row actually inserted
// in w.pub.seqs, keyed by id.
func (w *writer) insertEvents(ms []*transport.Message) error {
	if w.pub.seqs == nil {
		w.pub.seqs = map[string]int64{}
	}
	clear(w.pub.seqs)
	for len(ms) > 0 {
		n := chunk(len(ms))
		st, err := w.stmt(w.insEvents, n, insEventsSQL)
		if err != nil {
			return err
		}
		args := w.args[:0]
		for _, m := range ms[:n] {
			args = append(args, m.ID, m.Source(), m.Type, m.Key, m.Priority, nanos(m.Time), w.now, encodeAttrs(m.Attrs), m.Data, eventRunAt(w.now, m))
		}
		err = w.queryInserted(st, args)
		clear(args)
		w.args = args[:0]
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

func (w *writer) queryInserted(st *sql.Stmt, args []any) error {
	rows, err := st.QueryContext(context.Background(), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		var id, source string
		if err := rows.Scan(&seq, &id, &source); err != nil {
			return err
		}
		w.pub.seqs[transport.IdentityKey(source, id)] = seq
	}
	return rows.Err()
}

// markDuplicate sets m.Duplicate to the event stored under m's identity.
func (w *writer) markDuplicate(m *transport.Message) error {
	dup, err := loadStored(context.Background(), w.st.loadStored.QueryRowContext, m)
	if err != nil {
		return err
	}
	m.Duplicate = dup
	return nil
}

// loadStored reads the event kept under m's identity through query.
func loadStored(ctx context.Context, query func(ctx context.Context, args ...any) *sql.Row, m *transport.Message) (*transport.Message, error) {
	dup := &transport.Message{ID: m.ID}
	var attrs []byte
	err := query(ctx, m.ID, m.Source()).Scan(&dup.Type, &dup.Key, &dup.Priority, (*nanoTime)(&dup.Time), &attrs, &dup.Data)
	if err != nil {
		return nil, fmt.Errorf("reading the stored event %q of source %q: %w", m.ID, m.Source(), err)
	}
	dup.Attrs = decodeAttrs(attrs)
	return dup, nil
}

func (w *writer) insertDeliveries(ds []delRow) error {
	for len(ds) > 0 {
		n := chunk(len(ds))
		st, err := w.stmt(w.insDeliveries, n, insDeliveriesSQL)
		if err != nil {
			return err
		}
		args := w.args[:0]
		for _, d := range ds[:n] {
			args = append(args, d.sub, d.seq, d.runAt, d.priority, d.key, d.delayed)
			w.touch(d.sub)
		}
		_, err = st.ExecContext(context.Background(), args...)
		clear(args)
		w.args = args[:0]
		if err != nil {
			return err
		}
		ds = ds[n:]
	}
	return nil
}
