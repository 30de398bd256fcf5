package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ripplehq/ripple/transport"
)

// DefaultSchema is the PostgreSQL schema of the outbox table unless
// WithSchema says otherwise. It differs from the postgres transport's
// "ripple" schema, so the two never share a schema.
const DefaultSchema = "ripple_outbox"

const (
	// batchSize bounds the messages one relay transaction moves.
	batchSize = 500
	// pollInterval bounds how long a relay sleeps without looking, in case
	// a notification was missed.
	pollInterval = time.Second
)

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Postgres is a transactional outbox in the application's PostgreSQL
// database: a table messages in its own schema. It implements
// transport.Outbox; give it to ripple.WithOutbox, or run its Relay from
// `ripple relay`.
type Postgres struct {
	pool    *pgxpool.Pool
	owned   bool // Close closes pool
	schema  string
	qschema string
	channel string
	lockNS  int32
	log     *slog.Logger

	elsewhere bool // RelayElsewhere

	mu     sync.Mutex
	ready  bool
	dbName string
}

// Option configures an outbox.
type Option func(*config) error

type config struct {
	schema    string
	log       *slog.Logger
	elsewhere bool
}

// WithSchema names the PostgreSQL schema of the outbox table (default
// "ripple_outbox"): lower-case letters, digits and _. An SQLite outbox
// refuses it.
func WithSchema(name string) Option {
	return func(c *config) error {
		if !schemaName.MatchString(name) {
			return fmt.Errorf("outbox: WithSchema(%q): a schema name is 1 to 63 lower-case letters, digits and underscores, not starting with a digit", name)
		}
		c.schema = name
		return nil
	}
}

// WithLogger sets the logger for relay failures (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("outbox: WithLogger(nil)")
		}
		c.log = l
		return nil
	}
}

// RelayElsewhere makes Relay do nothing but wait for its context to end:
// for a bus that publishes through the outbox (WithOutbox) while the relay
// runs in other processes (`ripple relay`).
func RelayElsewhere() Option {
	return func(c *config) error {
		c.elsewhere = true
		return nil
	}
}

func buildConfig(opts []Option) (config, error) {
	c := config{log: slog.Default()}
	for _, o := range opts {
		if o == nil {
			return c, errors.New("outbox: nil Option")
		}
		if err := o(&c); err != nil {
			return c, err
		}
	}
	return c, nil
}

// NewPostgres returns an outbox in the database of pool, the pool the
// application begins its transactions on. The table is created on first
// use. The pool stays the caller's to close.
func NewPostgres(pool *pgxpool.Pool, opts ...Option) (*Postgres, error) {
	if pool == nil {
		return nil, errors.New("outbox: NewPostgres(nil pool)")
	}
	c, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	p := &Postgres{pool: pool, schema: c.schema, log: c.log, elsewhere: c.elsewhere}
	if p.schema == "" {
		p.schema = DefaultSchema
	}
	p.qschema = pgx.Identifier{p.schema}.Sanitize()
	p.channel = "ripple_outbox." + p.schema
	h := fnv.New32a()
	h.Write([]byte("ripple_outbox:" + p.schema))
	p.lockNS = int32(h.Sum32())
	return p, nil
}

// OpenPostgres connects to the database at url (postgres://…, as pgx
// takes it) and returns an outbox there; Close closes its pool.
func OpenPostgres(ctx context.Context, url string, opts ...Option) (*Postgres, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	p, err := NewPostgres(pool, opts...)
	if err != nil {
		pool.Close()
		return nil, err
	}
	p.owned = true
	if err := p.ensure(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

// Close closes the pool if OpenPostgres opened it.
func (p *Postgres) Close() error {
	if p.owned {
		p.pool.Close()
	}
	return nil
}

// ensure creates the schema and table once.
func (p *Postgres) ensure(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ready {
		return nil
	}
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, 0)", p.lockNS); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+p.qschema); err != nil {
			return err
		}
		// One row per message: key orders the relay ('' for none),
		// msg is the message as JSON.
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+p.qschema+`.messages (
			seq bigserial PRIMARY KEY,
			key text NOT NULL,
			msg jsonb NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, "SELECT current_database()").Scan(&p.dbName)
	})
	if err != nil {
		return fmt.Errorf("outbox: creating %s.messages: %w", p.schema, err)
	}
	p.ready = true
	return nil
}

// stored is a message as the outbox keeps it.
type stored struct {
	ID        string            `json:"id"`
	Type      string            `json:"type"`
	Key       string            `json:"key,omitempty"`
	Priority  int               `json:"priority,omitempty"`
	Time      time.Time         `json:"time"`
	NotBefore int64             `json:"not_before,omitempty"` // unix ns; from Delay
	Attrs     map[string]string `json:"attrs,omitempty"`
	Data      []byte            `json:"data,omitempty"`
}

// querier is a pgx.Tx, or a *sql.Tx adapted.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) error
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

type pgxTx struct{ tx pgx.Tx }

func (t pgxTx) Exec(ctx context.Context, q string, args ...any) error {
	_, err := t.tx.Exec(ctx, q, args...)
	return err
}
func (t pgxTx) QueryRow(ctx context.Context, q string, args ...any) pgx.Row {
	return t.tx.QueryRow(ctx, q, args...)
}

type sqlTx struct{ tx *sql.Tx }

func (t sqlTx) Exec(ctx context.Context, q string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, q, args...)
	return err
}
func (t sqlTx) QueryRow(ctx context.Context, q string, args ...any) pgx.Row {
	return t.tx.QueryRowContext(ctx, q, args...)
}

// Put implements transport.Outbox: msgs are written with tx (a pgx.Tx, or
// a *sql.Tx of the pgx stdlib driver) on the outbox's database, with a
// notification that wakes the relays when tx commits.
func (p *Postgres) Put(ctx context.Context, tx any, msgs []*transport.Message) error {
	var e execer
	switch t := tx.(type) {
	case pgx.Tx:
		e = pgxTx{t}
	case *sql.Tx:
		e = sqlTx{t}
	case nil:
		return errors.New("outbox: PublishTx: tx is nil; pass the pgx.Tx or *sql.Tx the event must commit with")
	default:
		return fmt.Errorf("outbox: PublishTx: tx is a %T; the PostgreSQL outbox takes a pgx.Tx (pgx/v5, pgxpool) or a *sql.Tx opened with the pgx stdlib driver", tx)
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := p.ensure(ctx); err != nil {
		return err
	}
	var db string
	var has bool
	if err := e.QueryRow(ctx, `SELECT current_database(), to_regclass($1) IS NOT NULL`, p.qschema+".messages").Scan(&db, &has); err != nil {
		return txErr(err)
	}
	if db != p.dbName || !has {
		return fmt.Errorf("outbox: PublishTx: the transaction is on database %q, which has no outbox table %s.messages; the outbox uses database %q: begin the transaction on the outbox's database", db, p.schema, p.dbName)
	}
	keys := make([]string, len(msgs))
	docs := make([][]byte, len(msgs))
	now := time.Now().UnixNano()
	for i, m := range msgs {
		if m == nil || m.ID == "" {
			return errors.New("outbox: message without an ID")
		}
		s := stored{ID: m.ID, Type: m.Type, Key: m.Key, Priority: m.Priority, Time: m.Time, Attrs: m.Attrs, Data: m.Data}
		if m.Delay > 0 {
			s.NotBefore = now + int64(m.Delay)
		}
		b, err := json.Marshal(s)
		if err != nil {
			return fmt.Errorf("outbox: encoding message %s: %w", m.ID, err)
		}
		keys[i], docs[i] = m.Key, b
	}
	err := e.Exec(ctx, `INSERT INTO `+p.qschema+`.messages (key, msg)
		SELECT k, m FROM unnest($1::text[], $2::jsonb[]) WITH ORDINALITY AS t(k, m, o) ORDER BY o`, keys, docs)
	if err != nil {
		return txErr(err)
	}
	if err := e.Exec(ctx, `SELECT pg_notify($1, '')`, p.channel); err != nil {
		return txErr(err)
	}
	return nil
}

func txErr(err error) error {
	if errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("outbox: PublishTx: the transaction is already committed or rolled back (%v); publish inside an open transaction, before Commit", err)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "25P02" {
		return fmt.Errorf("outbox: PublishTx: the transaction has failed and is being rolled back (%v); nothing can be written in it", err)
	}
	return fmt.Errorf("outbox: %w", err)
}

// Relay implements transport.Outbox. Each pass is one transaction: it
// takes the oldest messages, but of a key only while it holds that key's
// advisory lock (transaction-scoped, taken without waiting), so two relays
// never move messages of one key at once and a key's messages leave in the
// order they were put; messages without a key are shared out with FOR
// UPDATE SKIP LOCKED. It publishes them to d in one call and deletes them
// in the same transaction, which commits only after d acknowledged them. A
// relay that dies before its commit leaves the messages in the outbox; the
// next pass publishes them again with the same ids, which d's publish
// deduplication stores once.
func (p *Postgres) Relay(ctx context.Context, d transport.Driver) error {
	if p.elsewhere {
		<-ctx.Done()
		return nil
	}
	if err := p.ensure(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	wake := make(chan struct{}, 1)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.listen(lctx, wake) }()
	defer wg.Wait()
	backoff := time.Duration(0)
	for {
		n, err := p.pass(ctx, d)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			p.log.Warn("outbox: relay pass failed; retrying", "schema", p.schema, "transport", d.Name(), "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		if n > 0 {
			continue
		}
		t := time.NewTimer(pollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// listen turns notifications into wake-ups, reconnecting when its
// connection drops.
func (p *Postgres) listen(ctx context.Context, wake chan<- struct{}) {
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	for ctx.Err() == nil {
		// A connection of its own, not one of the application's pool,
		// which a wait for notifications would hold indefinitely.
		c, err := pgx.ConnectConfig(ctx, p.pool.Config().ConnConfig.Copy())
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{p.channel}.Sanitize()); err == nil {
			signal()
			for {
				if _, err := c.WaitForNotification(ctx); err != nil {
					break
				}
				signal()
			}
		}
		_ = c.Close(context.Background())
	}
}

// pass moves one batch and returns how many messages it moved.
func (p *Postgres) pass(ctx context.Context, d transport.Driver) (int, error) {
	var moved int
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		moved = 0
		// The keys of the oldest messages, then those of them this relay
		// may move now.
		rows, err := tx.Query(ctx, `SELECT k FROM (SELECT DISTINCT key AS k FROM (SELECT key FROM `+p.qschema+`.messages
			ORDER BY seq LIMIT $1) o WHERE key <> '') c WHERE pg_try_advisory_xact_lock($2, hashtext(k))`, batchSize, p.lockNS)
		if err != nil {
			return err
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		type row struct {
			seq int64
			doc []byte
		}
		var got []row
		read := func(q string, args ...any) error {
			rows, err := tx.Query(ctx, q, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var r row
				if err := rows.Scan(&r.seq, &r.doc); err != nil {
					rows.Close()
					return err
				}
				got = append(got, r)
			}
			rows.Close()
			return rows.Err()
		}
		if len(keys) > 0 {
			if err := read(`SELECT seq, msg FROM `+p.qschema+`.messages WHERE key = ANY($1) ORDER BY seq LIMIT $2`, keys, batchSize); err != nil {
				return err
			}
		}
		if err := read(`SELECT seq, msg FROM `+p.qschema+`.messages WHERE key = '' ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED`, batchSize); err != nil {
			return err
		}
		sort.Slice(got, func(i, j int) bool { return got[i].seq < got[j].seq })
		var seqs []int64
		var msgs []*transport.Message
		now := time.Now().UnixNano()
		for _, r := range got {
			var s stored
			if err := json.Unmarshal(r.doc, &s); err != nil {
				return fmt.Errorf("outbox: message %d is not readable (%v); delete it from %s.messages", r.seq, err, p.schema)
			}
			// IDGenerated stays false even for an id the core made up:
			// a relay that died before deleting publishes the id again,
			// so the transport must keep its dedup record (a transport
			// may keep none for generated ids).
			m := &transport.Message{ID: s.ID, Type: s.Type, Key: s.Key, Priority: s.Priority, Time: s.Time, Attrs: s.Attrs, Data: s.Data}
			if s.NotBefore > now {
				m.Delay = time.Duration(s.NotBefore - now)
			}
			seqs = append(seqs, r.seq)
			msgs = append(msgs, m)
		}
		if len(msgs) == 0 {
			return nil
		}
		// Publish one key's run in order; a batch keeps the order of seq.
		if err := d.Publish(ctx, msgs); err != nil {
			return fmt.Errorf("publishing %d messages to %s: %w", len(msgs), d.Name(), err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+p.qschema+`.messages WHERE seq = ANY($1)`, seqs); err != nil {
			return err
		}
		moved = len(msgs)
		return nil
	})
	return moved, err
}

// Pending returns how many messages wait in the outbox.
func (p *Postgres) Pending(ctx context.Context) (int64, error) {
	if err := p.ensure(ctx); err != nil {
		return 0, err
	}
	var n int64
	err := p.pool.QueryRow(ctx, `SELECT count(*) FROM `+p.qschema+`.messages`).Scan(&n)
	return n, err
}

var _ transport.Outbox = (*Postgres)(nil)
