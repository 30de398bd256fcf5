// Package ripple is an event bus for Go applications: publish an event,
// and every handler registered for it runs independently, with retries,
// backoff, dead-letter queues, idempotency, ordering and metrics, on an
// embedded SQLite file or on a broker chosen by URL.
//
// # Opening a bus
//
// Open takes a URL whose scheme picks the transport. The transport's
// package registers the scheme when imported, as database/sql drivers do:
//
//	import _ "github.com/ripplehq/ripple/transport/sqlite"
//
//	bus, err := ripple.Open(ctx, "sqlite://app.db")
//
// transport/all imports every transport. Moving from SQLite to Redis is a
// change of URL; application code stays the same.
//
// # Handlers
//
// On registers a handler under a durable name for an event pattern. Every
// handler name receives every matching event (fan-out); several processes
// registering the same name share its events (competing consumers). The
// handler's result decides what happens: nil acknowledges; an error
// retries with exponential backoff and jitter; Permanent(err) or the last
// attempt moves the event to the handler's dead-letter queue; RetryAfter
// asks for a specific wait. A panic is recovered and retried. Handlers
// never acknowledge by hand.
//
// Options tune each handler: Concurrency, RateLimit, MaxAttempts, Backoff,
// Timeout, Lease, Idempotent, Ordered, Ephemeral, and StartFrom or
// FromBeginning for a new handler that starts from retained history. Each
// documents its default. A handler's ctx carries the values of the ctx
// the bus was started with. Pause and Resume stop and restart one handler
// in every process without deleting its queue.
//
// Middleware wraps handlers for what every handler needs (logging,
// tracing, tenancy): Bus.Use wraps every handler of the bus, WithMiddleware
// one. WaitIdle waits until the handlers have nothing left to do, for
// scripts and tests.
//
// # Publishing
//
// Publish validates the event name, encodes the payload as JSON and
// returns once the transport has stored the event durably. Publish
// options set the ordering key, a delay or delivery time (WithDelay,
// WithDeliverAt), a priority, an explicit id (an event's identity is its
// source and id: publishing a (source, id) the transport still remembers
// stores nothing and returns the kept event marked Duplicate), the CloudEvents attributes (WithSource,
// WithSubject, WithDataSchema, WithEventTime, WithContentType), headers
// and the schema version.
//
// Events are CloudEvents 1.0: Event's MarshalJSON and UnmarshalJSON write
// and read the CloudEvents JSON structured format.
//
// # Delivery guarantees
//
// Delivery is at least once: a handler may see an event again after a
// crash or a lost lease. Idempotent() makes each (handler, event source
// and id) run to success at most once by claiming it atomically before
// the handler runs.
// Ordered() handles events with the same key one at a time, in publish
// order. A transport that cannot honour an option fails at On or Publish
// with an error matching ErrNotSupported.
//
// # Errors
//
// Errors match the sentinels ErrClosed, ErrNotSupported, ErrInvalidOption,
// ErrInvalidName, ErrTooLarge, ErrDuplicateHandler, ErrUnknownTransport,
// ErrUnknownHandler, ErrOutcomeUnknown (a publish whose outcome is unknown;
// publishing it again with the same id is safe), ErrStorageFull and
// ErrCorrupt through errors.Is, and wrap the transport's own error so
// errors.As reaches it.
//
// # Stopping
//
// Run blocks until its ctx ends and then drains; Shutdown(ctx) stops
// taking events and waits for running handlers until ctx ends, then
// cancels them and hands their events back without counting the attempt;
// Close is Shutdown bounded by ShutdownTimeout, for defer.
package ripple
