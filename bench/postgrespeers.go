package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// newPGPool opens a pgx pool of maxConns connections to url.
func newPGPool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	return pgxpool.NewWithConfig(ctx, cfg)
}

// RiverPostgres is River with its pgx v5 driver (LISTEN/NOTIFY wake-ups),
// its schema migrated with rivermigrate into a fresh Postgres schema, one
// queue of 10 workers and the fetch timing of the SQLite row (cooldown
// 1 ms, poll 5 ms). A job goes to one worker, so it cannot fan out.
func RiverPostgres(url string) System {
	return System{
		Name:     "river-postgres",
		Group:    "postgres",
		Consumes: true,
		Notes:    "River riverpgxv5, pgx pool of 20, MaxWorkers 10, fetch cooldown 1 ms, poll 5 ms, synchronous_commit=on",
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			if handlers != 1 {
				return nil, errors.New("river: a job is worked by one worker; fan-out is not measured")
			}
			pool, err := newPGPool(ctx, url, 20)
			if err != nil {
				return nil, err
			}
			schema := newSchema()
			fail := func(err error) (Instance, error) {
				pool.Close()
				dropSchema(url, schema)
				return nil, err
			}
			if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
				return fail(err)
			}
			driver := riverpgxv5.New(pool)
			migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				return fail(err)
			}
			if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
				return fail(err)
			}
			workers := river.NewWorkers()
			river.AddWorker(workers, &riverWorker{h: h})
			client, err := river.NewClient(driver, &river.Config{
				Schema:            schema,
				Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: HandlerConcurrency}},
				Workers:           workers,
				FetchCooldown:     riverFetchCooldown,
				FetchPollInterval: riverFetchPoll,
				Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				return fail(err)
			}
			if err := client.Start(ctx); err != nil {
				return fail(err)
			}
			return &riverPGInstance{pool: pool, client: client, url: url, schema: schema}, nil
		},
	}
}

type riverPGInstance struct {
	pool        *pgxpool.Pool
	client      *river.Client[pgx.Tx]
	url, schema string
}

func (r *riverPGInstance) Publish(ctx context.Context, payload []byte) error {
	_, err := r.client.Insert(ctx, riverArgs{Event: payload}, nil)
	return err
}

func (r *riverPGInstance) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := r.client.StopAndCancel(ctx)
	r.pool.Close()
	dropSchema(r.url, r.schema)
	return err
}

// watermillSQLPoll is Watermill SQL's poll interval here. Its subscriber
// polls (no LISTEN/NOTIFY); the default 1 s would bound it far below what
// it can do, so it gets the same short poll as River's rows.
const watermillSQLPoll = 5 * time.Millisecond

// WatermillSQLPostgres is Watermill SQL v4 on PostgreSQL through pgx:
// DefaultPostgreSQLSchema (a table per topic, JSON payload, batches of 100)
// and DefaultPostgreSQLOffsetsAdapter (an offsets row per consumer group).
// Each handler is a consumer group whose subscription is read by 10
// goroutines acking after the handler; the subscriber sends a
// subscription's next message only after the previous ack, so a group
// handles its events one at a time.
func WatermillSQLPostgres(url string) System {
	return System{
		Name:     "watermill-sql-postgres",
		Group:    "postgres",
		Consumes: true,
		Notes:    "Watermill SQL v4.1.2, pgx pool of 20, DefaultPostgreSQLSchema + DefaultPostgreSQLOffsetsAdapter, poll 5 ms, a consumer group per handler",
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			pool, err := newPGPool(ctx, url, 20)
			if err != nil {
				return nil, err
			}
			schema := newSchema()
			w := &watermillPeer{topic: EventType, cleanup: func() error {
				pool.Close()
				dropSchema(url, schema)
				return nil
			}}
			if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
				_ = w.Close()
				return nil, err
			}
			table := func(prefix string) func(string) string {
				return func(topic string) string {
					return pgx.Identifier{schema, prefix + topic}.Sanitize()
				}
			}
			sa := wsql.DefaultPostgreSQLSchema{GenerateMessagesTableName: table("watermill_")}
			oa := wsql.DefaultPostgreSQLOffsetsAdapter{GenerateMessagesOffsetsTableName: table("watermill_offsets_")}
			db := wsql.BeginnerFromPgx(pool)
			pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: sa, AutoInitializeSchema: true}, watermill.NopLogger{})
			if err != nil {
				_ = w.Close()
				return nil, err
			}
			w.pub = pub
			for i := range handlers {
				sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
					ConsumerGroup:    fmt.Sprintf("bench-counter-%d", i+1),
					PollInterval:     watermillSQLPoll,
					SchemaAdapter:    sa,
					OffsetsAdapter:   oa,
					InitializeSchema: true,
				}, watermill.NopLogger{})
				if err != nil {
					_ = w.Close()
					return nil, err
				}
				if err := w.read(sub, HandlerConcurrency, h); err != nil {
					_ = w.Close()
					return nil, err
				}
			}
			return w, nil
		},
	}
}

// copyBatch is how many rows one transaction of the batched ceiling writes.
const copyBatch = 100

// CopyPostgres is the batched write ceiling: publishes are gathered into
// batches of 100 rows, each written with one pgx CopyFrom in its own
// transaction, through a pool of 16 connections. A Publish that fills a
// batch writes and commits it before returning; the 99 others return at
// once, so it measures rows per second when every commit carries 100
// rows, not an awaited publish. Close writes what is left.
func CopyPostgres(url string) System {
	return System{
		Name:  "postgres-copy-100",
		Group: "postgres",
		Notes: "pgx pool, CopyFrom of 100 rows per transaction, synchronous_commit=on (a ceiling in rows/s; 99 of 100 publishes are not awaited)",
		Open: func(ctx context.Context, _ string, _ int, _ HandleFunc) (Instance, error) {
			pool, err := newPGPool(ctx, url, 16)
			if err != nil {
				return nil, err
			}
			schema := newSchema()
			if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema+"; CREATE TABLE "+schema+".events (id bigserial PRIMARY KEY, data bytea NOT NULL)"); err != nil {
				pool.Close()
				return nil, err
			}
			return &copyPG{pool: pool, schema: schema, url: url}, nil
		},
	}
}

type copyPG struct {
	pool        *pgxpool.Pool
	schema, url string
	mu          sync.Mutex
	rows        [][]any
}

func (c *copyPG) Publish(ctx context.Context, payload []byte) error {
	c.mu.Lock()
	c.rows = append(c.rows, []any{payload})
	var batch [][]any
	if len(c.rows) >= copyBatch {
		batch, c.rows = c.rows, make([][]any, 0, copyBatch)
	}
	c.mu.Unlock()
	if batch == nil {
		return nil
	}
	return c.write(ctx, batch)
}

func (c *copyPG) write(ctx context.Context, rows [][]any) error {
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		n, err := tx.CopyFrom(ctx, pgx.Identifier{c.schema, "events"}, []string{"data"}, pgx.CopyFromRows(rows))
		if err == nil && n != int64(len(rows)) {
			err = fmt.Errorf("copy wrote %d rows of %d", n, len(rows))
		}
		return err
	})
}

// Rows returns how many rows the table holds.
func (c *copyPG) Rows(ctx context.Context) (int64, error) {
	var n int64
	err := c.pool.QueryRow(ctx, "SELECT count(*) FROM "+c.schema+".events").Scan(&n)
	return n, err
}

func (c *copyPG) Close() error {
	c.mu.Lock()
	rest := c.rows
	c.rows = nil
	c.mu.Unlock()
	var err error
	if len(rest) > 0 {
		err = c.write(context.Background(), rest)
	}
	c.pool.Close()
	dropSchema(c.url, c.schema)
	return err
}
