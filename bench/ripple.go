package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/ripplehq/ripple"

	_ "github.com/ripplehq/ripple/transport/memory"
	_ "github.com/ripplehq/ripple/transport/redis"
	_ "github.com/ripplehq/ripple/transport/sqlite"
)

// openCounting opens a bus at u with handlers counting handlers on
// EventType, started.
func openCounting(ctx context.Context, u string, handlers int, h HandleFunc) (*ripple.Bus, error) {
	bus, err := ripple.Open(ctx, u, quietLogger())
	if err != nil {
		return nil, err
	}
	fn := func(_ context.Context, e ripple.Event) error {
		h(e.Data)
		return nil
	}
	for i := range handlers {
		if err := bus.On(EventType, fmt.Sprintf("bench-counter-%d", i+1), fn, ripple.Concurrency(HandlerConcurrency)); err != nil {
			_ = bus.Close()
			return nil, err
		}
	}
	if err := bus.Start(ctx); err != nil {
		_ = bus.Close()
		return nil, err
	}
	return bus, nil
}

// quietLogger keeps a benchmarked bus's logs out of the report.
func quietLogger() ripple.Option {
	return ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// RippleSystem adapts one Ripple transport to the benchmark. url returns
// the URL of a fresh bus whose files, if any, live in dir; nothing else about
// the transport needs to be known, so a new transport is one call.
func RippleSystem(name, notes string, url func(dir string) string) System {
	return System{
		Name:     name,
		Ripple:   true,
		Consumes: true,
		Notes:    notes,
		Open: func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
			u := url(dir)
			bus, err := openCounting(ctx, u, handlers, h)
			if err != nil {
				return nil, err
			}
			return rippleInstance{bus, u}, nil
		},
	}
}

type rippleInstance struct {
	bus *ripple.Bus
	url string
}

func (r rippleInstance) Publish(ctx context.Context, payload []byte) error {
	_, err := r.bus.Publish(ctx, EventType, json.RawMessage(payload))
	return err
}

func (r rippleInstance) Close() error { return r.bus.Close() }
