package bench

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/ripplehq/ripple"
)

// SQLite2Bus is Ripple's sqlite transport deployed as a web process that
// publishes and a worker process that handles: two buses opened separately
// on one database file, one that only publishes and one that only runs the
// handlers. Each bus has its own connections, writer and poller, exactly as
// two processes would, so the scenario measures what one process sees of
// the other's commits (the shared write lock, the cross-process wake-up).
func SQLite2Bus() System {
	return System{
		Name:     "ripple-sqlite-2bus",
		Ripple:   true,
		Consumes: true,
		Notes:    "sqlite transport, synchronous=FULL, publisher bus and handler bus opened separately on one file (two processes' deployment)",
		Open: func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
			u := "sqlite://" + dir + "/ripple.db"
			worker, err := openCounting(ctx, u, handlers, h)
			if err != nil {
				return nil, err
			}
			// The publisher opens after the worker has subscribed, as a web
			// process started beside a running worker would.
			pub, err := ripple.Open(ctx, u, quietLogger())
			if err != nil {
				_ = worker.Close()
				return nil, err
			}
			return twoBus{pub: pub, worker: worker}, nil
		},
	}
}

// twoBus publishes on one bus and handles on the other.
type twoBus struct {
	pub, worker *ripple.Bus
}

func (t twoBus) Publish(ctx context.Context, payload []byte) error {
	_, err := t.pub.Publish(ctx, EventType, json.RawMessage(payload))
	return err
}

func (t twoBus) Close() error {
	return errors.Join(t.pub.Close(), t.worker.Close())
}
