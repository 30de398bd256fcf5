package postgres

import (
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Pool returns the connection pool of a bus opened on a postgres:// URL,
// so that the application can run its own transactions in the same
// database and publish in them with bus.PublishTx: pass the pgx.Tx, or
// a *sql.Tx of stdlib.OpenDBFromPool(pool) for database/sql code. The pool
// belongs to the bus: it closes with the bus, so do not close it.
func Pool(bus interface{ As(any) bool }) (*pgxpool.Pool, error) {
	var pool *pgxpool.Pool
	if bus == nil || !bus.As(&pool) || pool == nil {
		return nil, errors.New("postgres transport: Pool: the bus does not use the postgres transport; open it with a postgres:// URL")
	}
	return pool, nil
}

// Schema returns the PostgreSQL schema that holds the Ripple tables of a
// bus opened on a postgres:// URL (the URL's schema parameter, "ripple"
// by default).
func Schema(bus interface{ As(any) bool }) (string, error) {
	var s busSchema
	if bus == nil || !bus.As(&s) {
		return "", errors.New("postgres transport: Schema: the bus does not use the postgres transport; open it with a postgres:// URL")
	}
	return string(s), nil
}

type busSchema string

// As gives bus.As access to the driver's connection pool (target
// **pgxpool.Pool).
func (d *driver) As(target any) bool {
	switch t := target.(type) {
	case **pgxpool.Pool:
		*t = d.pool
		return true
	case *busSchema:
		*t = busSchema(d.schema)
		return true
	}
	return false
}
