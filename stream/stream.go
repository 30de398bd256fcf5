package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// Window is one window of event time, [Start, End): an event belongs to
// it when Start <= Event.Time < End.
type Window struct {
	Start time.Time
	End   time.Time
}

// Result is the data of the event a stream publishes for one key and one
// window once the window closes.
type Result[A any] struct {
	// Stream is the stream's name.
	Stream string `json:"stream"`
	// Key is the key the window was computed for ("" without KeyBy).
	Key string `json:"key"`
	// Start and End bound the window, [Start, End), in UTC.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Events is how many distinct events were folded into the window.
	Events int64 `json:"events"`
	// Value is the aggregate: the count for Count, the accumulator for
	// Reduce and Aggregate.
	Value A `json:"value"`
}

// Stats are a stream's counters since it was created in this process.
type Stats struct {
	// Events counts distinct events folded into at least one window.
	Events int64 `json:"events"`
	// Duplicates counts deliveries of an event (same source and id)
	// already folded into its windows, which were ignored: at-least-once
	// delivery may hand a handler the same event twice.
	Duplicates int64 `json:"duplicates"`
	// Dropped counts deliveries that came after every window they belong
	// to had closed, and were folded into none. A redelivery of an event
	// that was counted before its window closed is dropped too.
	Dropped int64 `json:"dropped"`
	// PartlyLate counts deliveries folded into some of their windows but
	// too late for others (only hopping windows overlap).
	PartlyLate int64 `json:"partly_late"`
	// Emitted counts window results published and newly stored.
	Emitted int64 `json:"emitted"`
	// Republished counts window results whose publish found the result
	// stored already (a re-run after a crash, or a replay): nothing new
	// was stored.
	Republished int64 `json:"republished"`
	// Conflicts counts, among Republished, results whose stored data
	// differs from the one computed this time (the first one stands).
	Conflicts int64 `json:"conflicts"`
	// Unpublished counts window results that could not be published at
	// all, and were logged at ERROR and let go: an accumulator that does
	// not encode to JSON, or a result Publish refuses whatever the
	// retries (larger than the bus's MaxEventSize, say). A publish that
	// fails otherwise (the transport unreachable) is retried instead.
	Unpublished int64 `json:"unpublished"`
	// OpenWindows is how many (window, key) pairs are held in memory.
	OpenWindows int `json:"open_windows"`
	// Watermark is the event time before which windows have closed: the
	// latest event time seen minus the allowed lateness (or a later time
	// given to Advance). Zero before the first event.
	Watermark time.Time `json:"watermark"`
}

// Option configures a stream in New.
type Option func(*config) error

type config struct {
	size, hop   time.Duration
	windows     int // how many window options were given
	key         func(ripple.Event) (string, error)
	keyOfData   any // KeyByData's func(T) string
	keys        int // how many key options were given
	lateness    time.Duration
	emit        string
	handler     string
	handlerOpts []ripple.HandlerOption
	logger      *slog.Logger
	onLate      func(ripple.Event, Window)
}

// Tumbling makes the stream's windows tumbling windows of the given size:
// back to back, not overlapping, aligned on the Unix epoch (a one-minute
// window starts on the minute). Every event belongs to exactly one.
func Tumbling(size time.Duration) Option {
	return func(c *config) error {
		if size <= 0 {
			return fmt.Errorf("Tumbling(%s): the window size must be positive", size)
		}
		c.size, c.hop = size, size
		c.windows++
		return nil
	}
}

// Hopping makes the stream's windows hopping (sliding) windows of the
// given size, a new one starting every hop, aligned on the Unix epoch:
// Hopping(time.Hour, 10*time.Minute) gives the last hour's result every
// ten minutes. An event belongs to about size/hop windows. hop must not
// exceed size (gaps between windows would drop events unseen).
func Hopping(size, hop time.Duration) Option {
	return func(c *config) error {
		if size <= 0 || hop <= 0 {
			return fmt.Errorf("Hopping(%s, %s): the window size and hop must be positive", size, hop)
		}
		if hop > size {
			return fmt.Errorf("Hopping(%s, %s): the hop is longer than the window, so events between windows would be lost; use a hop no longer than the size", size, hop)
		}
		c.size, c.hop = size, hop
		c.windows++
		return nil
	}
}

// KeyBy computes each window per key: key(e) is the key of event e (the
// plan of a signup, the country of an order). Without KeyBy every event
// has the key "".
func KeyBy(key func(ripple.Event) string) Option {
	return func(c *config) error {
		if key == nil {
			return errors.New("KeyBy(nil): pass the function that returns an event's key")
		}
		c.key = func(e ripple.Event) (string, error) { return key(e), nil }
		c.keys++
		return nil
	}
}

// KeyByData is KeyBy over the event's decoded payload: key(v) is the key
// of an event whose data decodes into v. An event whose data does not
// decode into T fails with a Permanent error (to the stream handler's
// dead-letter queue) and is not counted.
func KeyByData[T any](key func(T) string) Option {
	return func(c *config) error {
		if key == nil {
			return errors.New("KeyByData(nil): pass the function that returns an event's key")
		}
		c.key = func(e ripple.Event) (string, error) {
			var v T
			if err := e.Decode(&v); err != nil {
				return "", err
			}
			return key(v), nil
		}
		// Aggregate over the same T keys the payload it decodes anyway,
		// rather than decoding every event twice.
		c.keyOfData = key
		c.keys++
		return nil
	}
}

// AllowedLateness sets how far behind the latest event time seen an event
// may be and still be counted. A window closes, and its result is
// published, once an event at or after End+d has been seen; later events
// of that window are dropped and counted in Stats.Dropped. Default 0: a
// window closes as soon as an event at or after its end arrives, which
// suits only input delivered in time order.
func AllowedLateness(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("AllowedLateness(%s): lateness must not be negative", d)
		}
		c.lateness = d
		return nil
	}
}

// Emit names the type of the events the stream publishes, one per key and
// window, carrying a Result. Required. It must not match the stream's own
// pattern, or the stream would count its own results.
func Emit(eventType string) Option {
	return func(c *config) error {
		if err := ripple.ValidateName(eventType); err != nil {
			return fmt.Errorf("Emit: %w", err)
		}
		c.emit = eventType
		return nil
	}
}

// HandlerName sets the name of the handler the stream registers with
// bus.On. Default: the stream's name.
func HandlerName(name string) Option {
	return func(c *config) error {
		if err := ripple.ValidateHandlerName(name); err != nil {
			return fmt.Errorf("HandlerName: %w", err)
		}
		c.handler = name
		return nil
	}
}

// HandlerOptions passes options to the bus.On call that registers the
// stream's handler: a start position in retained history for a new
// stream (ripple.FromBeginning), MaxAttempts, Timeout, middleware.
func HandlerOptions(opts ...ripple.HandlerOption) Option {
	return func(c *config) error {
		c.handlerOpts = append(c.handlerOpts, opts...)
		return nil
	}
}

// WithLogger sets the logger for dropped late events and results that
// cannot be published. Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("WithLogger(nil): pass slog.Default() or a discarding logger")
		}
		c.logger = l
		return nil
	}
}

// OnLate calls f for every window an event arrived too late for, such as
// to keep late events aside for a later correction. f runs with the
// stream's lock held: it must be quick and must not call the stream.
func OnLate(f func(e ripple.Event, w Window)) Option {
	return func(c *config) error {
		if f == nil {
			return errors.New("OnLate(nil): pass the function to call for late events")
		}
		c.onLate = f
		return nil
	}
}

// Stream is a windowed computation over the events matching a pattern.
// Create it with New, register it with Count, Reduce or Aggregate before
// the bus starts, and read its counters with Stats.
type Stream struct {
	bus     *ripple.Bus
	name    string
	pattern string
	cfg     config
	err     error // the first error of New's arguments, reported on registration

	mu  sync.Mutex // guards eng's assignment only; eng has its own lock
	eng engine
}

// engine is the state of a registered stream; its type depends on the
// aggregate's types.
type engine interface {
	handle(ctx context.Context, e ripple.Event) error
	advance(ctx context.Context, t time.Time) error
	stats() Stats
}

// New describes a stream named name over the events matching pattern.
// The name identifies the stream's results (their ids derive from it) and
// is its handler's name unless HandlerName says otherwise, so keep it
// when the stream's computation is unchanged and rename it when it
// changes. Options must include a window (Tumbling or Hopping) and Emit.
// New never fails: a bad argument is reported by Count, Reduce or
// Aggregate, which register the stream.
func New(bus *ripple.Bus, name, pattern string, opts ...Option) *Stream {
	s := &Stream{bus: bus, name: name, pattern: pattern, cfg: config{logger: slog.Default()}}
	fail := func(err error) {
		if s.err == nil {
			s.err = fmt.Errorf("stream %q: %w", name, err)
		}
	}
	if bus == nil {
		fail(errors.New("bus is nil"))
	}
	if err := ripple.ValidateHandlerName(name); err != nil {
		fail(fmt.Errorf("the stream name must be a valid handler name: %w", err))
	}
	if err := ripple.ValidatePattern(pattern); err != nil {
		fail(err)
	}
	for _, o := range opts {
		if o == nil {
			fail(errors.New("nil Option"))
			continue
		}
		if err := o(&s.cfg); err != nil {
			fail(err)
		}
	}
	switch {
	case s.cfg.windows == 0:
		fail(errors.New("no window: pass stream.Tumbling(size) or stream.Hopping(size, hop)"))
	case s.cfg.windows > 1:
		fail(errors.New("more than one window option: pass one of Tumbling and Hopping"))
	}
	if s.cfg.keys > 1 {
		fail(errors.New("more than one key option: pass one of KeyBy and KeyByData"))
	}
	if s.cfg.emit == "" {
		fail(errors.New("no result type: pass stream.Emit(\"some.result.type\")"))
	} else if s.err == nil && transport.Match(pattern, s.cfg.emit) {
		fail(fmt.Errorf("the result type %q matches the stream's pattern %q, so the stream would count its own results; choose a result type outside the pattern", s.cfg.emit, pattern))
	}
	if s.cfg.handler == "" {
		s.cfg.handler = name
	}
	return s
}

// Name returns the stream's name.
func (s *Stream) Name() string { return s.name }

// Handler returns the name of the handler the stream registers, for
// bus.Replay, bus.Stats and `ripple replay`.
func (s *Stream) Handler() string { return s.cfg.handler }

// Count registers the stream counting events: each result's Value is the
// number of distinct events of its key in its window (an int64).
func (s *Stream) Count() error {
	return Reduce(s, func() int64 { return 0 }, func(n int64, _ ripple.Event) int64 { return n + 1 })
}

// Reduce registers the stream folding each window's events into an
// accumulator: init returns a window's empty accumulator and add folds
// one event into it. A result's Value is the accumulator, encoded as
// JSON. add runs with the stream's lock held: keep it quick. It may
// return its argument modified (a map, a pointer) or a new value.
// On a bus whose transport does not deduplicate publishes (kafka:// or
// amqp:// without a store= side store) it registers nothing and returns
// an error matching ripple.ErrNotSupported.
func Reduce[A any](s *Stream, init func() A, add func(acc A, e ripple.Event) A) error {
	if init == nil || add == nil {
		return fmt.Errorf("stream %q: Reduce needs both init and add", s.name)
	}
	return register(s, func(e ripple.Event) (ripple.Event, error) { return e, nil }, init, add)
}

// Aggregate registers the stream folding the decoded payloads of each
// window's events into an accumulator, as Reduce does: each event's data
// is decoded into a T and passed to add. An event whose data does not
// decode into T fails with a Permanent error (to the stream handler's
// dead-letter queue) and is not counted.
func Aggregate[T, A any](s *Stream, init func() A, add func(acc A, v T) A) error {
	if init == nil || add == nil {
		return fmt.Errorf("stream %q: Aggregate needs both init and add", s.name)
	}
	decode := func(e ripple.Event) (T, error) {
		var v T
		err := e.Decode(&v)
		return v, err
	}
	return register(s, decode, init, add)
}

// register builds the stream's engine and registers its handler.
func register[T, A any](s *Stream, decode func(ripple.Event) (T, error), init func() A, add func(A, T) A) error {
	if s.err != nil {
		return s.err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eng != nil {
		return fmt.Errorf("stream %q is already registered; a stream computes one aggregate: create another stream for another", s.name)
	}
	if err := canPublishResults(s.bus); err != nil {
		return fmt.Errorf("stream %q: %w", s.name, err)
	}
	eng := newCore(s, decode, init, add)
	if err := s.bus.On(s.pattern, s.cfg.handler, eng.handle, s.cfg.handlerOpts...); err != nil {
		return fmt.Errorf("stream %q: %w", s.name, err)
	}
	s.eng = eng
	return nil
}

func (s *Stream) registered() (engine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eng == nil {
		if s.err != nil {
			return nil, s.err
		}
		return nil, fmt.Errorf("stream %q is not registered: call Count, Reduce or Aggregate first", s.name)
	}
	return s.eng, nil
}

// Handle folds one event into the stream's windows and publishes the
// results of the windows it closes. It is the handler the stream
// registers with bus.On; call it directly to feed the stream events
// from elsewhere. It returns a Permanent error (the event goes to the
// dead-letter queue, uncounted) for an event without a time or whose
// data does not decode for KeyByData or Aggregate; otherwise an error,
// and the event is retried, only when a result could not be published
// (it is tried again on the next call) or ctx ended. A redelivered event
// is not counted twice.
func (s *Stream) Handle(ctx context.Context, e ripple.Event) error {
	eng, err := s.registered()
	if err != nil {
		return err
	}
	return eng.handle(ctx, e)
}

// Advance moves the watermark to t, if later, and publishes the results
// of the windows that closes, as the arrival of an event at t+lateness
// would. A stream's windows close only as later events arrive; a live
// stream whose events may pause calls Advance from a ticker with
// time.Now().Add(-lateness) so its last windows are published. Never
// advance a stream that is replaying history past that history: its
// events would all be dropped as late.
func (s *Stream) Advance(ctx context.Context, t time.Time) error {
	eng, err := s.registered()
	if err != nil {
		return err
	}
	return eng.advance(ctx, t)
}

// Stats returns the stream's counters. Before registration they are all
// zero.
func (s *Stream) Stats() Stats {
	eng, err := s.registered()
	if err != nil {
		return Stats{}
	}
	return eng.stats()
}

// canPublishResults refuses a bus whose transport does not deduplicate
// publishes: a stream's results are published with deterministic ids so
// that a re-run stores each once, which only publish deduplication gives.
func canPublishResults(bus *ripple.Bus) error {
	var d transport.Driver
	if !bus.As(&d) || d.Capabilities().Dedup {
		return nil
	}
	return &ripple.NotSupportedError{
		Transport: d.Name(),
		Option:    "stream results (publish deduplication, WithID)",
		Hint: "a stream publishes each window result under an id derived from the window, so that a re-run stores it once; open the " + d.Name() +
			" transport with a side store that remembers published ids, the store= URL parameter (such as store=sqlite%3A%2F%2F%2Fvar%2Flib%2Fapp%2Fstore.db or store=redis%3A%2F%2Fhost%3A6379%2F0), or use a transport that deduplicates (sqlite, postgres, redis, nats, memory)",
	}
}
