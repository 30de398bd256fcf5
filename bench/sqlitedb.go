package bench

import (
	"database/sql"
	"fmt"

	_ "modernc.org/sqlite"
)

// openSQLite opens a SQLite database file the way the peers' documentation
// recommends: WAL journal, a busy timeout, and a pool of one connection,
// since SQLite runs one writer at a time. synchronous is "FULL" (every
// commit reaches stable storage, the setting comparable with Ripple's
// default) or "NORMAL".
func openSQLite(path, synchronous string) (*sql.DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(" + synchronous + ")"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		_ = db.Close()
		return nil, err
	}
	if mode != "wal" {
		_ = db.Close()
		return nil, fmt.Errorf("%s: journal_mode is %q, want wal", path, mode)
	}
	return db, nil
}
