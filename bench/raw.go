package bench

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
)

// RawSQLite is the ceiling for one awaited durable write: each publish is
// one INSERT of the payload in its own transaction, committed before Publish
// returns, on one connection with the given synchronous setting ("FULL" or
// "NORMAL"). It has no consumer; concurrent publishers queue for the one
// connection, as they would for SQLite's single writer.
func RawSQLite(synchronous string) System {
	return System{
		Name:  "sqlite-raw-" + strings.ToLower(synchronous),
		Notes: "modernc.org/sqlite, WAL, synchronous=" + synchronous + ", one INSERT per transaction",
		Open: func(ctx context.Context, dir string, handlers int, _ HandleFunc) (Instance, error) {
			db, err := openSQLite(filepath.Join(dir, "raw.db"), synchronous)
			if err != nil {
				return nil, err
			}
			if _, err := db.ExecContext(ctx, `CREATE TABLE events (id INTEGER PRIMARY KEY, data BLOB NOT NULL)`); err != nil {
				_ = db.Close()
				return nil, err
			}
			return rawInstance{db}, nil
		},
	}
}

type rawInstance struct{ db *sql.DB }

func (r rawInstance) Publish(ctx context.Context, payload []byte) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (data) VALUES (?)`, payload); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}

func (r rawInstance) Close() error { return r.db.Close() }
