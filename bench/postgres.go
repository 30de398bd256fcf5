package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	_ "github.com/ripplehq/ripple/transport/postgres"
)

// postgresSystemNames lists the systems that need a PostgreSQL server, in
// run and report order: ripple-postgres between the two raw ceilings, so
// that on a machine whose load changes during the run its ratios to them
// compare measurements taken minutes, not a whole run, apart.
var postgresSystemNames = []string{"postgres-raw-insert", "ripple-postgres", "postgres-copy-100", "river-postgres", "watermill-sql-postgres"}

// PostgresURLFromEnv returns the PostgreSQL URL set in
// RIPPLE_BENCH_POSTGRES_URL or, failing that, RIPPLE_TEST_POSTGRES_URL, or "".
func PostgresURLFromEnv() string {
	if u := os.Getenv("RIPPLE_BENCH_POSTGRES_URL"); u != "" {
		return u
	}
	return os.Getenv("RIPPLE_TEST_POSTGRES_URL")
}

// PostgresSystems returns the systems that use the PostgreSQL server at
// url, in postgresSystemNames's order. Each instance works in a fresh
// schema that it drops when it closes.
func PostgresSystems(url string) []System {
	rp := RippleSystem("ripple-postgres", "postgres transport, default settings (synchronous_commit=on)",
		func(string) string { return withQuery(url, "schema", newSchema()) })
	open := rp.Open
	rp.Open = func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
		in, err := open(ctx, dir, handlers, h)
		if err != nil {
			return nil, err
		}
		return dropSchemaOnClose{in, url, in.(rippleInstance).url}, nil
	}
	rp.Group = "postgres"
	raw := RawPostgres(url)
	raw.Group = "postgres"
	return []System{raw, rp, CopyPostgres(url), RiverPostgres(url), WatermillSQLPostgres(url)}
}

func newSchema() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return "bench_" + hex.EncodeToString(b)
}

type dropSchemaOnClose struct {
	Instance
	server, url string
}

func (d dropSchemaOnClose) Close() error {
	err := d.Instance.Close()
	_, schema, _ := cutLast(d.url, "schema=")
	dropSchema(d.server, schema)
	return err
}

func cutLast(s, sep string) (string, string, bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

func dropSchema(server, schema string) {
	c, err := pgx.Connect(context.Background(), server)
	if err != nil {
		return
	}
	defer c.Close(context.Background())
	_, _ = c.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

// RawPostgres is the ceiling for one awaited durable write to PostgreSQL:
// each publish is one single-row INSERT, committed (autocommit) before
// Publish returns, through a pgx pool of 16 connections. It has no
// consumer.
func RawPostgres(url string) System {
	return System{
		Name:  "postgres-raw-insert",
		Notes: "pgx pool, one single-row INSERT per commit, synchronous_commit=on",
		Open: func(ctx context.Context, _ string, _ int, _ HandleFunc) (Instance, error) {
			cfg, err := pgxpool.ParseConfig(url)
			if err != nil {
				return nil, err
			}
			cfg.MaxConns = 16
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				return nil, err
			}
			schema := newSchema()
			if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema+"; CREATE TABLE "+schema+".events (id bigserial PRIMARY KEY, data bytea NOT NULL)"); err != nil {
				pool.Close()
				return nil, err
			}
			return rawPG{pool, schema, url}, nil
		},
	}
}

type rawPG struct {
	pool   *pgxpool.Pool
	schema string
	url    string
}

func (r rawPG) Publish(ctx context.Context, payload []byte) error {
	_, err := r.pool.Exec(ctx, "INSERT INTO "+r.schema+".events (data) VALUES ($1)", payload)
	return err
}

func (r rawPG) Close() error {
	r.pool.Close()
	dropSchema(r.url, r.schema)
	return nil
}
