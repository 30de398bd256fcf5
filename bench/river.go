package bench

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
)

// River's fetch timing. SQLite has no LISTEN/NOTIFY, so River polls: the
// defaults (100 ms cooldown, 1 s poll) bound it to a few hundred jobs a
// second with latencies near a second. These are its minimum cooldown and a
// short poll, its best showing on this workload.
const (
	riverFetchCooldown = time.Millisecond
	riverFetchPoll     = 5 * time.Millisecond
)

// riverArgs carries the payload as River job args. River stores args as
// JSON, so the event is embedded as is.
type riverArgs struct {
	Event json.RawMessage `json:"event"`
}

// Kind names the job kind River stores.
func (riverArgs) Kind() string { return "bench_event" }

type riverWorker struct {
	river.WorkerDefaults[riverArgs]
	h HandleFunc
}

// Work counts the job's event.
func (w *riverWorker) Work(_ context.Context, job *river.Job[riverArgs]) error {
	w.h(job.Args.Event)
	return nil
}

// RiverSQLite is River with its SQLite driver over modernc.org/sqlite
// (synchronous=FULL, one connection as its driver documentation advises),
// its schema migrated with rivermigrate, and one queue of 10 workers. A job
// goes to one worker, so it cannot fan out to several handlers.
func RiverSQLite() System {
	return System{
		Name:     "river-sqlite",
		Consumes: true,
		Notes:    "River riversqlite, SQLite WAL synchronous=FULL, MaxWorkers 10, fetch cooldown 1 ms, poll 5 ms",
		Open: func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
			if handlers != 1 {
				return nil, errors.New("river: a job is worked by one worker; fan-out is not measured")
			}
			db, err := openSQLite(filepath.Join(dir, "river.db"), "FULL")
			if err != nil {
				return nil, err
			}
			driver := riversqlite.New(db)
			migrator, err := rivermigrate.New(driver, nil)
			if err != nil {
				_ = db.Close()
				return nil, err
			}
			if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
				_ = db.Close()
				return nil, err
			}
			workers := river.NewWorkers()
			river.AddWorker(workers, &riverWorker{h: h})
			client, err := river.NewClient(driver, &river.Config{
				Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: HandlerConcurrency}},
				Workers:           workers,
				FetchCooldown:     riverFetchCooldown,
				FetchPollInterval: riverFetchPoll,
				Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				_ = db.Close()
				return nil, err
			}
			if err := client.Start(ctx); err != nil {
				_ = db.Close()
				return nil, err
			}
			return &riverInstance{db: db, client: client}, nil
		},
	}
}

type riverInstance struct {
	db     *sql.DB
	client *river.Client[*sql.Tx]
}

func (r *riverInstance) Publish(ctx context.Context, payload []byte) error {
	_, err := r.client.Insert(ctx, riverArgs{Event: payload}, nil)
	return err
}

func (r *riverInstance) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := r.client.StopAndCancel(ctx)
	return errors.Join(err, r.db.Close())
}
