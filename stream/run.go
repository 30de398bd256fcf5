package stream

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// Stream is an Aggregator running as a handler on a bus.
type Stream[A any] struct {
	agg    *Aggregator[A]
	bus    *ripple.Bus
	name   string
	output string

	mu        sync.Mutex
	pending   []Result[A]
	published int64
}

// Run registers handler name for pattern on bus: every event goes into a
// new Aggregator for cfg, and every closed window is published as an
// event of type output whose data is the Result as JSON, whose key is
// the result's key, and whose id is Result.ID(name). Start the bus as
// usual. The bus's transport must deduplicate publishes (see the package
// doc); Run returns an error matching ripple.ErrNotSupported otherwise.
func Run[A any](bus *ripple.Bus, pattern, name, output string, cfg Config[A], opts ...ripple.HandlerOption) (*Stream[A], error) {
	var d transport.Driver
	if bus.As(&d) && d != nil && !d.Capabilities().Dedup {
		return nil, fmt.Errorf("stream %s: %w: the %s transport does not deduplicate publishes, so a re-run would publish window results twice",
			name, ripple.ErrNotSupported, d.Name())
	}
	if err := ripple.ValidateName(output); err != nil {
		return nil, fmt.Errorf("stream %s: output type: %w", name, err)
	}
	agg, err := New(cfg)
	if err != nil {
		return nil, err
	}
	s := &Stream[A]{agg: agg, bus: bus, name: name, output: output}
	if err := bus.On(pattern, name, s.handle, opts...); err != nil {
		return nil, err
	}
	return s, nil
}

// Aggregator returns the stream's aggregator (for Late and Open).
func (s *Stream[A]) Aggregator() *Aggregator[A] { return s.agg }

// Published returns how many window results the stream has published.
func (s *Stream[A]) Published() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published
}

func (s *Stream[A]) handle(ctx context.Context, e ripple.Event) error {
	rs, err := s.agg.Add(e)
	if err != nil {
		return ripple.Permanent(err)
	}
	return s.emit(ctx, rs)
}

// Advance moves the watermark to t (for example the wall clock minus the
// lateness, when the stream goes quiet) and publishes what closes.
func (s *Stream[A]) Advance(ctx context.Context, t time.Time) error {
	return s.emit(ctx, s.agg.Advance(t))
}

// Flush closes every open window and publishes the results (end of a
// bounded input).
func (s *Stream[A]) Flush(ctx context.Context) error {
	return s.emit(ctx, s.agg.Flush())
}

// emit publishes rs after the results still pending from a failed
// publish, in order. A failure keeps the rest pending and is returned, so
// the handler's event is retried and the next call publishes them.
func (s *Stream[A]) emit(ctx context.Context, rs []Result[A]) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = append(s.pending, rs...)
	for len(s.pending) > 0 {
		r := s.pending[0]
		opts := []ripple.PublishOption{ripple.WithID(r.ID(s.name))}
		if r.Key != "" {
			opts = append(opts, ripple.WithKey(r.Key))
		}
		if _, err := s.bus.Publish(ctx, s.output, r, opts...); err != nil {
			return fmt.Errorf("stream %s: publishing the result of window %s for key %q: %w", s.name, r.Window.Start.Format(time.RFC3339), r.Key, err)
		}
		s.pending = s.pending[1:]
		s.published++
	}
	return nil
}
