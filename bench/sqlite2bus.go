package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/ripplehq/ripple"
)

// RippleSQLiteTwoBuses is the sqlite transport as a web process and a
// worker process use it: one bus publishes and another, opened on the same
// file, runs the handlers. Each bus has its own connections, writer and
// wake-ups, exactly as two processes would; only the Go runtime is shared.
// A commit of one bus reaches the other through the file (its poll of
// SQLite's data_version, or a cross-process wake-up where the transport
// has one).
func RippleSQLiteTwoBuses(name, notes, query string) System {
	return System{
		Name:     name,
		Ripple:   true,
		Consumes: true,
		Notes:    notes,
		Open: func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
			u := "sqlite://" + dir + "/ripple.db" + query
			quiet := ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
			worker, err := ripple.Open(ctx, u, quiet)
			if err != nil {
				return nil, err
			}
			fn := func(_ context.Context, e ripple.Event) error {
				h(e.Data)
				return nil
			}
			for i := range handlers {
				if err := worker.On(EventType, fmt.Sprintf("bench-counter-%d", i+1), fn, ripple.Concurrency(HandlerConcurrency)); err != nil {
					_ = worker.Close()
					return nil, err
				}
			}
			// The worker subscribes before the web bus publishes anything.
			if err := worker.Start(ctx); err != nil {
				_ = worker.Close()
				return nil, err
			}
			web, err := ripple.Open(ctx, u, quiet)
			if err != nil {
				_ = worker.Close()
				return nil, err
			}
			return twoBuses{web: web, worker: worker}, nil
		},
	}
}

type twoBuses struct{ web, worker *ripple.Bus }

func (t twoBuses) Publish(ctx context.Context, payload []byte) error {
	_, err := t.web.Publish(ctx, EventType, json.RawMessage(payload))
	return err
}

func (t twoBuses) Close() error { return errors.Join(t.web.Close(), t.worker.Close()) }
