package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/ripplehq/ripple/transport"
)

// CompleteTx implements transport.TxClaimer: tx (a pgx.Tx, or a *sql.Tx
// of the pgx stdlib driver, on the bus's database, as for PublishTx)
// marks the idempotency claim of (handler, key) done, so that the mark
// commits with the application's writes and events or not at all. A
// claim already done stores nothing and returns an error wrapping
// transport.ErrAlreadyDone.
//
// Two transactions marking the same claim cannot both commit: the second
// one's upsert waits on the first's row (the claim's primary key, or its
// row lock when the claim was taken), and once the first commits it finds
// the claim done and reports ErrAlreadyDone; when the first rolls back it
// goes ahead. At REPEATABLE READ or SERIALIZABLE the second fails with a
// serialization error instead, which also makes it roll back.
func (d *driver) CompleteTx(ctx context.Context, tx any, handler, key string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	var q querier
	switch t := tx.(type) {
	case pgx.Tx:
		q = t
	case *sql.Tx:
		q = sqlTx{t}
	case nil:
		return errors.New("postgres transport: CompleteTx: tx is nil; pass the pgx.Tx or *sql.Tx the handler's writes commit with")
	default:
		return fmt.Errorf("postgres transport: CompleteTx: tx is a %T; the postgres transport takes a pgx.Tx (pgx/v5, pgxpool) or a *sql.Tx opened with the pgx stdlib driver (database/sql, driver name \"pgx\")", tx)
	}
	// The statement checks the transaction's database itself, sparing a
	// round trip (as PublishTx's does): a database without the schema
	// fails it, one with a schema of the same name makes it write nothing
	// and return a row of -1.
	rows, err := q.Query(ctx, d.q(`WITH up AS (
		INSERT INTO @.claims (handler, event_id, done, expires_at, updated_at)
		SELECT $1, $2, true, 0, @.now_ns() WHERE current_database() = $3
		ON CONFLICT (handler, event_id) DO UPDATE SET done = true, expires_at = 0, updated_at = excluded.updated_at
		WHERE NOT @.claims.done
		RETURNING 1)
	SELECT count(*) FROM up
	UNION ALL
	SELECT -1 WHERE current_database() <> $3`), handler, key, d.dbName)
	if err != nil {
		if missingSchema(err) {
			return d.foreignTx(ctx, q, tx, "CompleteTx")
		}
		return d.txErr(err, "CompleteTx")
	}
	n, foreign := int64(0), false
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return d.txErr(err, "CompleteTx")
		}
		if v < 0 {
			foreign = true
		} else {
			n += v
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return d.txErr(err, "CompleteTx")
	}
	if foreign {
		return d.foreignTx(ctx, q, tx, "CompleteTx")
	}
	if n == 0 {
		return fmt.Errorf("postgres transport: CompleteTx: handler %q has already done event %q: %w", handler, key, transport.ErrAlreadyDone)
	}
	return nil
}

// Done implements transport.TxClaimer.
func (d *driver) Done(ctx context.Context, handler, key string) (bool, error) {
	if err := d.checkOpen(); err != nil {
		return false, err
	}
	var done bool
	err := d.pool.QueryRow(ctx, d.q(`SELECT done FROM @.claims WHERE handler = $1 AND event_id = $2`), handler, key).Scan(&done)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return done, d.wrap(err)
}
