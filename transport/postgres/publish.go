package postgres

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ripplehq/ripple/transport"
)

// pubOp is one Publish call waiting for a group commit.
type pubOp struct {
	ctx  context.Context
	msgs []*transport.Message
	err  error
	done chan struct{}
}

// publishCore stores a batch of messages in one statement, so in one
// implicit transaction and one WAL flush: each new event once (a (source,
// id) already stored, or repeated in the batch, is skipped) and a delivery
// for every subscription whose pattern matches. It returns the ordinal
// (1-based) of each stored message; the two statements below add how the
// subscriptions to wake are told.
const publishCore = `WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::bigint[], $7::bigint[], $8::bigint[], $9::jsonb[], $10::bytea[])
		WITH ORDINALITY AS t(source, id, type, key, priority, time, delay_ns, keep_ns, attrs, data, ord)
	WHERE current_database() = $11
), ins AS (
	INSERT INTO @.events (source, id, type, key, priority, time, published_at, keep_until, attrs, data)
	SELECT source, id, type, key, priority, time, @.now_ns(), @.after_ns(keep_ns), attrs, data FROM input ORDER BY ord
	ON CONFLICT (source, id) DO NOTHING
	RETURNING seq, source, id, type, key, priority
), firsts AS (
	SELECT DISTINCT ON (source, id) source, id, delay_ns, ord FROM input ORDER BY source, id, ord
), stored AS (
	SELECT ins.seq, ins.type, ins.key, ins.priority, f.delay_ns, f.ord FROM ins JOIN firsts f ON f.source = ins.source AND f.id = ins.id
), dels AS (
	INSERT INTO @.deliveries (sub_id, event_seq, state, run_at, priority, key, delayed)
	SELECT s.id, st.seq, 0, @.after_ns(st.delay_ns), st.priority, CASE WHEN s.ordered THEN st.key ELSE '' END, st.delay_ns > 0
	FROM stored st JOIN @.subscriptions s ON st.type ~ s.regex
	RETURNING sub_id
)`

// publishSQL is Publish's statement: besides the stored ordinals it
// returns each subscription given a delivery, negated, for the driver to
// wake. It sends no notification: NOTIFY in a transaction takes a
// database-wide lock from its commit until the commit's WAL flush is done,
// so that notifying commits never share a flush (PostgreSQL's group
// commit); the driver notifies other processes after the commit instead
// (see notifier).
const publishSQL = publishCore + `
SELECT ord FROM stored
UNION ALL
SELECT DISTINCT -sub_id FROM dels`

// publishTxSQL is PublishTx's statement: the notification naming the
// subscriptions to wake is part of the caller's transaction, so that it is
// sent when (and only if) that commits, and one last row of 0 says the
// transaction is on a database other than the driver's (nothing was
// written then). A notified batch returns a row of -1.
const publishTxSQL = publishCore + `, woke AS (
	SELECT pg_notify($12, string_agg(DISTINCT sub_id::text, ',')) FROM dels HAVING count(*) > 0
)
SELECT ord FROM stored
UNION ALL
SELECT -count(*) FROM woke HAVING count(*) > 0
UNION ALL
SELECT 0 WHERE current_database() <> $11`

// dupSQL reads back the stored messages of (source, id) pairs.
const dupSQL = `SELECT e.source, e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data
	FROM @.events e JOIN unnest($1::text[], $2::text[]) AS k(source, id) ON e.source = k.source AND e.id = k.id`

// Publish implements transport.Driver. Concurrent publishes are grouped:
// one statement (one commit, one WAL flush) stores the messages of every
// Publish queued meanwhile. It returns nil once that statement has
// committed. If ctx ends first it returns ctx.Err(); the messages may still
// be stored, which publish deduplication makes harmless to retry.
func (d *driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	for _, m := range msgs {
		if m == nil || m.ID == "" {
			return errors.New("postgres transport: message without an ID")
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// A publish finding nothing queued and a statement slot free stores
	// on its own goroutine, sparing the two goroutine hand-offs of the
	// queue; publishers that arrive meanwhile queue and are grouped.
	if len(d.pub) == 0 {
		select {
		case d.slots <- struct{}{}:
			err := d.publishInline(ctx, msgs)
			<-d.slots
			return err
		default:
		}
	}
	o := &pubOp{ctx: ctx, msgs: msgs, done: make(chan struct{})}
	d.mu.RLock()
	if d.closed {
		d.mu.RUnlock()
		return d.errClosed()
	}
	select {
	case d.pub <- o:
	case <-ctx.Done():
		d.mu.RUnlock()
		return d.gaveUp(ctx)
	}
	d.mu.RUnlock()
	select {
	case <-o.done:
		if o.err != nil && ctx.Err() != nil && errors.Is(o.err, ctx.Err()) {
			return d.gaveUp(ctx)
		}
		return o.err
	case <-ctx.Done():
		return d.gaveUp(ctx)
	}
}

func (d *driver) publishInline(ctx context.Context, msgs []*transport.Message) error {
	d.mu.RLock()
	closed := d.closed
	d.mu.RUnlock()
	if closed {
		return d.errClosed()
	}
	err := d.store(ctx, msgs)
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return d.gaveUp(ctx)
	}
	return err
}

// gaveUp explains a publish abandoned because its context ended.
func (d *driver) gaveUp(ctx context.Context) error {
	st := d.pool.Stat()
	if st.AcquiredConns() >= st.MaxConns() {
		return fmt.Errorf("postgres transport: publish gave up waiting: %w; all %d connections of the pool were in use (raise pool_max_conns in the URL, or hold the pool's connections for less time)", ctx.Err(), st.MaxConns())
	}
	return fmt.Errorf("postgres transport: publish not confirmed before its context ended: %w; the event may still be stored, and publishing it again with the same id is safe", ctx.Err())
}

// publishLoop is one group-commit goroutine: it takes a queued publish,
// waits for a statement slot (meanwhile more publishes queue), adds every
// publish queued by then, and stores them together.
func (d *driver) publishLoop() {
	batch := make([]*pubOp, 0, 64)
	for o := range d.pub {
		d.slots <- struct{}{}
		batch = append(batch[:0], o)
		n := len(o.msgs)
	drain:
		for n < maxBatch {
			select {
			case o2, ok := <-d.pub:
				if !ok {
					break drain
				}
				batch = append(batch, o2)
				n += len(o2.msgs)
			default:
				break drain
			}
		}
		d.runBatch(batch)
		<-d.slots
		clear(batch)
	}
}

func (d *driver) runBatch(batch []*pubOp) {
	live := batch[:0:0]
	var msgs []*transport.Message
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			close(o.done)
			continue
		}
		live = append(live, o)
		msgs = append(msgs, o.msgs...)
	}
	if len(live) == 0 {
		return
	}
	// The batch outlives any one caller's ctx: a caller that leaves only
	// stops waiting.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if len(live) == 1 {
		var c context.CancelFunc
		ctx, c = context.WithCancel(ctx)
		defer c()
		stop := context.AfterFunc(live[0].ctx, c)
		defer stop()
	}
	err := d.store(ctx, msgs)
	if err != nil && len(live) > 1 && !isConnErr(err) {
		// One bad message must not fail the others: store each
		// publish on its own.
		for _, o := range live {
			o.err = d.store(ctx, o.msgs)
			close(o.done)
		}
		return
	}
	for _, o := range live {
		o.err = err
		close(o.done)
	}
}

// store writes msgs in one statement, retrying a statement that never
// reached the server.
func (d *driver) store(ctx context.Context, msgs []*transport.Message) error {
	var err error
	retried := false
	for attempt := 0; ; attempt++ {
		retried = attempt > 0
		err = d.storeOnce(ctx, d.pool, msgs, false)
		if err == nil || !(pgconn.SafeToRetry(err) || serverTerminated(err)) || attempt >= 50 || ctx.Err() != nil {
			break
		}
		// The first retry goes at once: a stale pooled connection is the
		// usual cause, and the pool hands out another.
		if attempt > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(min(attempt, 10)) * 100 * time.Millisecond):
			}
		}
	}
	if err != nil {
		if ctx.Err() != nil && !isConnErr(err) {
			return ctx.Err()
		}
		return d.publishErr(err)
	}
	if retried {
		// A terminated connection may have committed the first try just
		// before it ended: a "duplicate" identical to the message is this
		// publish's own, not an earlier event's.
		for _, m := range msgs {
			if k := m.Duplicate; k != nil && k.Type == m.Type && k.Key == m.Key && k.Time.Equal(fromNanos(nanos(m.Time))) &&
				bytes.Equal(k.Data, m.Data) && maps.Equal(k.Attrs, m.Attrs) {
				m.Duplicate = nil
			}
		}
	}
	return nil
}

// publishErr maps a failed publish statement: a connection lost after the
// statement was sent leaves its outcome unknown.
func (d *driver) publishErr(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) && !pgconn.SafeToRetry(err) && isConnErr(err) {
		return fmt.Errorf("postgres transport: %w: %v", transport.ErrOutcomeUnknown, err)
	}
	return d.wrap(err)
}

// serverTerminated reports a connection the server ended with an error
// (a restart or an administrator's pg_terminate_backend): the statement
// did not commit, so running it again is safe.
func serverTerminated(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03")
}

// isConnErr reports an error of the connection rather than of the
// statement.
func isConnErr(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P01-03: server shutting down.
		return pe.Code[:2] == "08" || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// querier is what store needs: a pool, a connection or a pgx.Tx.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// pubArgs builds publishSQL's arguments.
func (d *driver) pubArgs(msgs []*transport.Message) ([]any, error) {
	n := len(msgs)
	var (
		sources, ids, types, keys = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		prios                     = make([]int32, n)
		times, delays, keeps      = make([]int64, n), make([]int64, n), make([]int64, n)
		attrs                     = make([][]byte, n)
		data                      = make([][]byte, n)
	)
	for i, m := range msgs {
		sources[i], ids[i], types[i], keys[i] = m.Source(), m.ID, m.Type, m.Key
		prios[i] = int32(m.Priority)
		times[i] = nanos(m.Time)
		delays[i] = int64(max(m.Delay, 0))
		keep := d.ret.DedupWindow
		if m.IDGenerated {
			keep = min(keep, transport.GeneratedIDWindow)
		}
		keeps[i] = int64(keep)
		if len(m.Attrs) > 0 {
			b, err := json.Marshal(m.Attrs)
			if err != nil {
				return nil, err
			}
			attrs[i] = b
		}
		data[i] = m.Data
		if data[i] == nil {
			data[i] = []byte{}
		}
	}
	return []any{sources, ids, types, keys, prios, times, delays, keeps, attrs, data, d.dbName}, nil
}

// errForeignDB is storeOnce's answer when a transaction is on a database
// other than the driver's.
var errForeignDB = errors.New("postgres transport: the transaction is on another database")

// storeOnce stores msgs on q and fills Duplicate for the messages it did
// not store. Outside a transaction (inTx false, q the pool) it then wakes
// the subscriptions given deliveries: this process's receivers at once,
// other processes' through the notifier. In a transaction the statement
// itself notifies, at its commit, and a transaction on another database
// stores nothing and gets errForeignDB.
func (d *driver) storeOnce(ctx context.Context, q querier, msgs []*transport.Message, inTx bool) error {
	args, err := d.pubArgs(msgs)
	if err != nil {
		return err
	}
	stmt := publishSQL
	if inTx {
		stmt = publishTxSQL
		args = append(args, d.channel)
	}
	rows, err := q.Query(ctx, d.q(stmt), args...)
	if err != nil {
		return err
	}
	stored := make([]bool, len(msgs))
	var woken []int64
	foreign := false
	for rows.Next() {
		var ord int64
		if err := rows.Scan(&ord); err != nil {
			rows.Close()
			return err
		}
		switch {
		case ord > 0:
			stored[ord-1] = true
		case ord == 0:
			foreign = true
		case !inTx:
			woken = append(woken, -ord)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if foreign {
		return errForeignDB
	}
	if len(woken) > 0 {
		for _, id := range woken {
			d.wake.Fire(id)
		}
		d.notifier.add(woken)
	}
	var dupSources, dupIDs []string
	for i, m := range msgs {
		m.Duplicate = nil
		if !stored[i] {
			dupSources = append(dupSources, m.Source())
			dupIDs = append(dupIDs, m.ID)
		}
	}
	if len(dupIDs) == 0 {
		return nil
	}
	rows, err = q.Query(ctx, d.q(dupSQL), dupSources, dupIDs)
	if err != nil {
		return err
	}
	kept := map[string]*transport.Message{}
	for rows.Next() {
		var (
			m     transport.Message
			src   string
			t     int64
			prio  int32
			attrs []byte
		)
		if err := rows.Scan(&src, &m.ID, &m.Type, &m.Key, &prio, &t, &attrs, &m.Data); err != nil {
			rows.Close()
			return err
		}
		m.Priority, m.Time = int(prio), fromNanos(t)
		m.Attrs = decodeAttrs(attrs)
		kept[transport.IdentityKey(src, m.ID)] = &m
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for i, m := range msgs {
		if stored[i] {
			continue
		}
		if k := kept[transport.IdentityKey(m.Source(), m.ID)]; k != nil {
			c := *k
			m.Duplicate = &c
		} else {
			// Stored by a transaction not yet visible here, or earlier
			// in this batch and not visible to this snapshot: the caller
			// still learns it was not stored by this call.
			c := *m
			c.Duplicate = nil
			m.Duplicate = &c
		}
	}
	return nil
}

func decodeAttrs(b []byte) map[string]string {
	if len(b) == 0 {
		return nil
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil
	}
	return m
}

// PublishTx implements transport.TxPublisher: the messages are written by
// tx, a pgx.Tx or a *sql.Tx of database/sql opened through pgx's stdlib
// driver, on the database (and schema) this driver uses, so they are
// stored if and only if tx commits. The notification that wakes handlers
// is part of tx too, so PostgreSQL delivers it at commit.
func (d *driver) PublishTx(ctx context.Context, tx any, msgs []*transport.Message) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	for _, m := range msgs {
		if m == nil || m.ID == "" {
			return errors.New("postgres transport: message without an ID")
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	var q querier
	switch t := tx.(type) {
	case pgx.Tx:
		q = t
	case *sql.Tx:
		q = sqlTx{t}
	case nil:
		return errors.New("postgres transport: PublishTx: tx is nil; pass the pgx.Tx or *sql.Tx the event must commit with")
	default:
		return fmt.Errorf("postgres transport: PublishTx: tx is a %T; the postgres transport takes a pgx.Tx (pgx/v5, pgxpool) or a *sql.Tx opened with the pgx stdlib driver (database/sql, driver name \"pgx\")", tx)
	}
	// The statement checks the transaction's database itself, sparing a
	// round trip: a database without the schema fails it, one with a
	// schema of the same name makes it store nothing.
	if err := d.storeOnce(ctx, q, msgs, true); err != nil {
		if errors.Is(err, errForeignDB) || missingSchema(err) {
			return d.foreignTx(ctx, q, tx, "PublishTx")
		}
		return d.txErr(err, "PublishTx")
	}
	return nil
}

// missingSchema reports a statement that failed because the schema or
// one of its tables does not exist in the database it ran on.
func missingSchema(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "3F000" || pe.Code == "42P01" || pe.Code == "42883")
}

// foreignTx explains a transaction refused because it is on another
// database than the driver's (or one without the driver's schema).
func (d *driver) foreignTx(ctx context.Context, q querier, tx any, op string) error {
	db := "(unknown)"
	if t, ok := tx.(pgx.Tx); ok && t.Conn() != nil {
		db = t.Conn().Config().Database
	}
	// The statement failed or stored nothing; when the transaction is
	// still usable its database's own name is the better answer.
	if rows, err := q.Query(ctx, `SELECT current_database()`); err == nil {
		for rows.Next() {
			_ = rows.Scan(&db)
		}
		rows.Close()
	}
	return fmt.Errorf("postgres transport: %s: the transaction is on database %q, which has no Ripple schema %q; the bus uses database %q: begin the transaction on the bus's database (the pool or *sql.DB of the same URL)", op, db, d.schema, d.dbName)
}

func (d *driver) txErr(err error, op string) error {
	if errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("postgres transport: %s: the transaction is already committed or rolled back (%v); call %s inside an open transaction, before Commit", op, err, op)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "25P02" {
		return fmt.Errorf("postgres transport: %s: the transaction has failed and is being rolled back (%v); nothing can be written in it", op, err)
	}
	return d.wrap(err)
}

// sqlTx runs publishSQL through database/sql. It needs the pgx stdlib
// driver, which passes Go slices through as PostgreSQL arrays.
type sqlTx struct{ tx *sql.Tx }

func (s sqlTx) Query(ctx context.Context, q string, args ...any) (pgx.Rows, error) {
	rows, err := s.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return &sqlRows{rows: rows}, nil
}

// sqlRows adapts *sql.Rows to the little of pgx.Rows that storeOnce uses.
type sqlRows struct {
	pgx.Rows
	rows *sql.Rows
}

func (r *sqlRows) Next() bool             { return r.rows.Next() }
func (r *sqlRows) Scan(dest ...any) error { return r.rows.Scan(dest...) }
func (r *sqlRows) Close()                 { _ = r.rows.Close() }
func (r *sqlRows) Err() error             { return r.rows.Err() }
