package bench

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"time"

	"maragu.dev/goqite"
	"maragu.dev/goqite/jobs"
)

// goqiteSchema is goqite's SQLite schema (schema_sqlite.sql in
// maragu.dev/goqite), which the package ships as a file, not as Go.
const goqiteSchema = `
create table goqite (
  id text primary key default ('m_' || lower(hex(randomblob(16)))),
  created text not null default (strftime('%Y-%m-%dT%H:%M:%fZ')),
  updated text not null default (strftime('%Y-%m-%dT%H:%M:%fZ')),
  queue text not null,
  body blob not null,
  timeout text not null default (strftime('%Y-%m-%dT%H:%M:%fZ')),
  received integer not null default 0,
  priority integer not null default 0
) strict;

create trigger goqite_updated_timestamp after update on goqite begin
  update goqite set updated = strftime('%Y-%m-%dT%H:%M:%fZ') where id = old.id;
end;

create index goqite_queue_priority_created_idx on goqite (queue, priority desc, created);
`

// goqitePoll is the job runner's poll interval. goqite's default is 100 ms;
// a shorter one gives it its best latency (when the queue is not empty the
// runner receives without waiting, so throughput does not depend on it).
const goqitePoll = 5 * time.Millisecond

// Goqite is maragu.dev/goqite's job runner over one SQLite queue
// (synchronous=FULL), with a limit of 10 jobs at once. A queue hands each
// message to one receiver, so it cannot fan out to several handlers.
func Goqite() System {
	return System{
		Name:     "goqite",
		Consumes: true,
		Notes:    "goqite jobs.Runner, SQLite WAL synchronous=FULL, Limit 10, poll 5 ms",
		Open: func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
			if handlers != 1 {
				return nil, errors.New("goqite: a queue delivers each message to one handler; fan-out is not measured")
			}
			db, err := openSQLite(filepath.Join(dir, "goqite.db"), "FULL")
			if err != nil {
				return nil, err
			}
			if _, err := db.ExecContext(ctx, goqiteSchema); err != nil {
				_ = db.Close()
				return nil, err
			}
			q := goqite.New(goqite.NewOpts{DB: db, Name: "bench"})
			r := jobs.NewRunner(jobs.NewRunnerOpts{Limit: HandlerConcurrency, PollInterval: goqitePoll, Queue: q})
			r.Register("count", func(_ context.Context, m []byte) error {
				h(m)
				return nil
			})
			runCtx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				r.Start(runCtx)
			}()
			return &goqiteInstance{db: db, q: q, cancel: cancel, done: done}, nil
		},
	}
}

type goqiteInstance struct {
	db     *sql.DB
	q      *goqite.Queue
	cancel context.CancelFunc
	done   chan struct{}
}

func (g *goqiteInstance) Publish(ctx context.Context, payload []byte) error {
	_, err := jobs.Create(ctx, g.q, "count", goqite.Message{Body: payload})
	return err
}

func (g *goqiteInstance) Close() error {
	g.cancel()
	<-g.done
	return g.db.Close()
}
