package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ripplehq/ripple/transport"
)

const (
	// sqliteTable is the SQLite outbox's table.
	sqliteTable = "ripple_outbox"
	// sqlitePoll is how often an idle SQLite relay looks for committed
	// messages: SQLite has no notifications.
	sqlitePoll = 50 * time.Millisecond
	// sqlitePublishTimeout bounds the broker publish a relay pass makes
	// while it holds SQLite's write lock.
	sqlitePublishTimeout = 10 * time.Second
)

// SQLite is a transactional outbox in the application's SQLite database:
// a table ripple_outbox in it. It implements transport.Outbox.
//
// A relay pass runs in one IMMEDIATE transaction, which holds the
// database's write lock while it publishes its batch to the transport
// (bounded by 10 s): relays, and the application's writers, wait for it.
// That is what keeps several relays from reordering a key, at the price of
// application writes waiting for one broker round trip now and then.
type SQLite struct {
	db        *sql.DB
	log       *slog.Logger
	elsewhere bool

	mu    sync.Mutex
	ready bool
	file  string
}

// NewSQLite returns an outbox in db, the *sql.DB the application begins its
// transactions on (any database/sql SQLite driver), creating its table if
// needed. db stays the caller's to close.
func NewSQLite(db *sql.DB, opts ...Option) (*SQLite, error) {
	if db == nil {
		return nil, errors.New("outbox: NewSQLite(nil db)")
	}
	c, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	if c.schema != "" {
		return nil, errors.New("outbox: WithSchema applies to a PostgreSQL outbox; SQLite has no schemas (the SQLite outbox's table is ripple_outbox)")
	}
	s := &SQLite{db: db, log: c.log, elsewhere: c.elsewhere}
	// The table is made now, not at the first PublishTx: creating it then,
	// on another connection while the caller's transaction holds SQLite's
	// write lock, would wait for that very transaction.
	if err := s.ensure(context.Background()); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *SQLite) ensure(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+sqliteTable+` (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		key TEXT NOT NULL,
		msg BLOB NOT NULL)`); err != nil {
		return fmt.Errorf("outbox: creating %s: %w", sqliteTable, err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&s.file); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	s.ready = true
	return nil
}

// Put implements transport.Outbox: msgs are written with tx, a *sql.Tx on
// the outbox's database.
func (s *SQLite) Put(ctx context.Context, tx any, msgs []*transport.Message) error {
	t, ok := tx.(*sql.Tx)
	if !ok {
		if tx == nil {
			return errors.New("outbox: PublishTx: tx is nil; pass the *sql.Tx the event must commit with")
		}
		return fmt.Errorf("outbox: PublishTx: tx is a %T; the SQLite outbox takes a *sql.Tx", tx)
	}
	if len(msgs) == 0 {
		return nil
	}
	var file string
	if err := t.QueryRowContext(ctx, `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&file); err != nil {
		return txErr(err)
	}
	if file != s.file {
		return fmt.Errorf("outbox: PublishTx: the transaction is on %q; the outbox is in %q: begin the transaction on the outbox's *sql.DB", file, s.file)
	}
	now := time.Now().UnixNano()
	var b strings.Builder
	args := make([]any, 0, 2*len(msgs))
	b.WriteString(`INSERT INTO ` + sqliteTable + ` (key, msg) VALUES `)
	for i, m := range msgs {
		if m == nil || m.ID == "" {
			return errors.New("outbox: message without an ID")
		}
		st := stored{ID: m.ID, Type: m.Type, Key: m.Key, Priority: m.Priority, Time: m.Time, Attrs: m.Attrs, Data: m.Data}
		if m.Delay > 0 {
			st.NotBefore = now + int64(m.Delay)
		}
		doc, err := json.Marshal(st)
		if err != nil {
			return fmt.Errorf("outbox: encoding message %s: %w", m.ID, err)
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?)")
		args = append(args, m.Key, doc)
	}
	if _, err := t.ExecContext(ctx, b.String(), args...); err != nil {
		return txErr(err)
	}
	return nil
}

// Relay implements transport.Outbox; see the type's documentation for
// how passes exclude each other.
func (s *SQLite) Relay(ctx context.Context, d transport.Driver) error {
	if s.elsewhere {
		<-ctx.Done()
		return nil
	}
	if err := s.ensure(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	backoff := time.Duration(0)
	for {
		n, err := s.pass(ctx, d)
		if ctx.Err() != nil {
			return nil
		}
		wait := sqlitePoll
		switch {
		case err != nil:
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			s.log.Warn("outbox: relay pass failed; retrying", "transport", d.Name(), "err", err, "retry_in", backoff)
			wait = backoff
		case n > 0:
			backoff = 0
			continue
		default:
			backoff = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (s *SQLite) pass(ctx context.Context, d transport.Driver) (int, error) {
	// Look before taking the write lock, so an idle relay never holds it.
	var one int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM `+sqliteTable+` LIMIT 1`).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	c, err := s.db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return 0, err
	}
	committed := false
	defer func() {
		if !committed {
			_, _ = c.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	rows, err := c.QueryContext(ctx, `SELECT seq, msg FROM `+sqliteTable+` ORDER BY seq LIMIT ?`, batchSize)
	if err != nil {
		return 0, err
	}
	var seqs []any
	var msgs []*transport.Message
	now := time.Now().UnixNano()
	for rows.Next() {
		var seq int64
		var doc []byte
		if err := rows.Scan(&seq, &doc); err != nil {
			rows.Close()
			return 0, err
		}
		var st stored
		if err := json.Unmarshal(doc, &st); err != nil {
			rows.Close()
			return 0, fmt.Errorf("outbox: message %d is not readable (%v); delete it from %s", seq, err, sqliteTable)
		}
		// As for PostgreSQL: never a generated id, so the transport keeps
		// the dedup record a repeated relay needs.
		m := &transport.Message{ID: st.ID, Type: st.Type, Key: st.Key, Priority: st.Priority, Time: st.Time, Attrs: st.Attrs, Data: st.Data}
		if st.NotBefore > now {
			m.Delay = time.Duration(st.NotBefore - now)
		}
		seqs = append(seqs, seq)
		msgs = append(msgs, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	pctx, cancel := context.WithTimeout(ctx, sqlitePublishTimeout)
	err = d.Publish(pctx, msgs)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("publishing %d messages to %s: %w", len(msgs), d.Name(), err)
	}
	q := `DELETE FROM ` + sqliteTable + ` WHERE seq IN (?` + strings.Repeat(", ?", len(seqs)-1) + `)`
	if _, err := c.ExecContext(ctx, q, seqs...); err != nil {
		return 0, err
	}
	if _, err := c.ExecContext(ctx, "COMMIT"); err != nil {
		return 0, err
	}
	committed = true
	return len(msgs), nil
}

// Pending returns how many messages wait in the outbox.
func (s *SQLite) Pending(ctx context.Context) (int64, error) {
	if err := s.ensure(ctx); err != nil {
		return 0, err
	}
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM `+sqliteTable).Scan(&n)
	return n, err
}

var _ transport.Outbox = (*SQLite)(nil)
