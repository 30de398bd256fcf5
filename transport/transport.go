// Package transport defines the contract between Ripple's core and the
// backends that store and move events (SQLite, memory, Redis, NATS, RabbitMQ,
// Kafka), and the registry that maps URL schemes to them.
//
// Application code never calls this package: it uses package ripple. The
// contract is deliberately small and batch-shaped. A driver stores bytes,
// hands out leased deliveries and records their outcome; it does not retry,
// back off, time out handlers or count metrics. Those policies live once in
// the core so that every backend behaves the same way.
//
// # Semantics a driver must give
//
//   - Publish returns nil only once the messages are durable to the degree
//     the driver documents, and are visible to every subscription whose
//     pattern matches their type and that existed when they were published.
//   - Each subscription (a handler name) sees every matching message once
//     (fan-out); concurrent receivers of the same subscription, in one
//     process or many, share its messages (competing consumers).
//   - A received delivery is leased. Until it is settled or its lease runs
//     out no other receiver gets it; after the lease runs out it is delivered
//     again with its attempt count increased.
//   - Settle records Complete, Retry (after a delay), Release (put back
//     without using an attempt) or Dead (move to the dead-letter queue).
//
// Optional behaviour (priority, ordering, delay, replay, dead-letter
// administration, idempotency claims, statistics) is declared in
// [Capabilities] and implemented through the optional interfaces in this
// package. The core refuses options a driver does not declare, with an error
// that matches ripple.ErrNotSupported.
//
// Conformance is checked by package transporttest, which every driver's
// tests run.
package transport

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"
)

// Message is an event as a driver stores it: the routing fields a driver
// needs, the remaining CloudEvents attributes as strings, and opaque data.
type Message struct {
	// ID is the event id. An event's identity is its source and id
	// together (CloudEvents: "source + id is unique"): publishing a
	// (source, ID) pair that the driver still remembers stores nothing
	// (publish deduplication), while the same ID under another source is
	// another event. [IdentityKey] builds the one string to key on.
	ID string
	// Type is the event name, for example "user.signup.completed".
	Type string
	// Key is the partition/ordering key; empty means none.
	Key string
	// Priority orders waiting messages of one subscription: higher first.
	Priority int
	// Time is when the event happened (CloudEvents "time").
	Time time.Time
	// Delay postpones the first delivery by this long, measured on the
	// driver's clock when the message is stored. Zero delivers at once.
	Delay time.Duration
	// Attrs holds the other CloudEvents attributes and extensions
	// (source, datacontenttype, dataversion, correlationid, causationid,
	// traceparent, user headers).
	Attrs map[string]string
	// Data is the payload.
	Data []byte
	// IDGenerated reports that the core made ID up (the publisher set
	// none). Such an id can only come again through a retry of this same
	// publish, so a driver that keeps a record per id for deduplication
	// may keep it for GeneratedIDWindow instead of the whole dedup window.
	IDGenerated bool

	// Duplicate is set by Publish, not by the caller: when the message's
	// (source, ID) was already stored, the driver stores nothing and sets
	// Duplicate to the message it kept (at least ID, Type, Time, Attrs and
	// Data as first stored), so the caller learns what was kept rather
	// than what it sent. Nil means the message was stored by this call.
	Duplicate *Message
}

// Source returns the message's CloudEvents source attribute.
func (m *Message) Source() string { return m.Attrs["source"] }

// IdentityKey returns the one string that identifies an event with this
// source and id, for drivers that key deduplication records and
// idempotency claims on a single string. Distinct pairs give distinct
// keys (the source's length is part of the key).
func IdentityKey(source, id string) string {
	return strconv.Itoa(len(source)) + ":" + source + "/" + id
}

// GeneratedIDWindow is how long a driver must remember an id the core
// generated: long enough to absorb a client library's retries of one
// publish after a lost reply.
const GeneratedIDWindow = 10 * time.Minute

// Delivery is one leased attempt at handling a message for a subscription.
//
// The core never modifies a Delivery's Attrs map (handlers get the values,
// not the map), so a driver may share it with its own copy of the message.
// Data is handed to the handler as it is: give each delivery its own.
type Delivery struct {
	Message
	// Attempt is the 1-based number of this attempt.
	Attempt int
	// FirstDelivered is when the message was first delivered to this
	// subscription; zero if the driver does not know.
	FirstDelivered time.Time
	// Token is driver-private state identifying this lease (for example a
	// row id and lease generation). The core passes it back untouched.
	Token any
}

// Outcome is what the core decided about a delivery.
type Outcome int

const (
	// Complete acknowledges the delivery: the handler succeeded.
	Complete Outcome = iota + 1
	// Retry makes the message deliverable again after Settlement.Delay;
	// the failed attempt counts.
	Retry
	// Release makes the message deliverable again after Settlement.Delay
	// without counting the attempt (shutdown, idempotency claim held
	// elsewhere, rate limiting).
	Release
	// Dead moves the message to the subscription's dead-letter queue.
	Dead
)

func (o Outcome) String() string {
	switch o {
	case Complete:
		return "complete"
	case Retry:
		return "retry"
	case Release:
		return "release"
	case Dead:
		return "dead"
	}
	return "unknown"
}

// Settlement records the outcome of one delivery.
type Settlement struct {
	Delivery *Delivery
	Outcome  Outcome
	// Delay is how long to wait before the next attempt (Retry, Release).
	Delay time.Duration
	// Error is the handler's error text (Retry, Dead).
	Error string
}

// SubscriptionSpec describes a durable subscription: one handler name.
type SubscriptionSpec struct {
	// Name is the handler name; it identifies the subscription durably.
	Name string
	// Pattern is the event pattern: dot-separated segments where "*"
	// matches one segment and ">" (last) one or more trailing segments.
	Pattern string
	// Ordered asks for per-key ordering: among messages with the same
	// non-empty key only the oldest unsettled one is deliverable, and a
	// message waiting for a retry holds back only its own key.
	Ordered bool
	// Lease is how long a delivery stays leased before it is redelivered,
	// unless extended.
	Lease time.Duration
	// MaxAttempts is the core's attempt budget. Drivers that enforce a
	// delivery limit natively must not be stricter than this.
	MaxAttempts int
	// Ephemeral asks for a subscription that lives only while receivers
	// hold it (a `ripple tail`, a test probe): the driver deletes it with
	// everything queued for it when its last receiver closes, and reaps it
	// when no receiver has received, settled or extended for a few leases
	// (a process killed with SIGKILL), so nothing durable is left behind.
	// Requires Capabilities.Ephemeral.
	Ephemeral bool
	// From, when not zero, makes a subscription that does not exist yet
	// start from history: every retained message of its pattern published
	// at or after From is delivered to it, then everything published
	// afterwards (a projection rebuilding its read model). The zero value
	// means "from now on": only messages published after Subscribe. An
	// existing subscription keeps its position whatever From says.
	// Use [Beginning] for all retained history. Requires
	// Capabilities.StartFrom.
	From time.Time
}

// Beginning is the From of a subscription that starts with the oldest
// retained message.
var Beginning = time.Unix(0, 1).UTC()

// Driver is an open connection to a backend. It is safe for concurrent use.
type Driver interface {
	// Name is the transport's name as used in errors ("sqlite", "redis").
	Name() string
	// Capabilities declares which optional semantics the driver gives.
	Capabilities() Capabilities
	// Publish stores messages durably. It returns nil only when every
	// message is stored (or was a duplicate of one still remembered).
	Publish(ctx context.Context, msgs []*Message) error
	// Subscribe creates the subscription if it does not exist (durably:
	// messages published after this returns are kept for it even while
	// no process receives) and returns a receiver for it.
	Subscribe(ctx context.Context, spec SubscriptionSpec) (Subscription, error)
	// Close releases the driver's resources. Leased deliveries not yet
	// settled are redelivered after their leases run out.
	Close() error
}

// Subscription receives and settles deliveries of one subscription. Its
// methods are safe for concurrent use.
type Subscription interface {
	// Receive leases up to max deliverable messages. It blocks until at
	// least one is available or ctx is done (then it returns ctx.Err()).
	Receive(ctx context.Context, max int) ([]*Delivery, error)
	// Settle records outcomes. A settlement whose lease has already been
	// lost (taken over by another receiver) is ignored without error,
	// except that a driver may still record a Complete, since the message
	// was handled. A driver may record Complete outcomes after Settle
	// returns, as brokers acknowledge in the background; it must have
	// recorded them when Close returns and before its own statistics
	// report them, and one lost to a crash only means the message is
	// delivered again.
	Settle(ctx context.Context, s []Settlement) error
	// Extend renews the leases of deliveries still being handled.
	Extend(ctx context.Context, d []*Delivery, lease time.Duration) error
	// Close stops receiving; it does not delete the subscription.
	Close() error
}

// Capabilities declares the optional semantics a driver gives. The zero
// value is a driver with none of them.
type Capabilities struct {
	// Durable: a published message survives a crash of the process.
	Durable bool
	// Delay: Message.Delay and Settlement.Delay are honoured.
	Delay bool
	// Priority: Message.Priority orders waiting messages.
	Priority bool
	// Ordered: SubscriptionSpec.Ordered is honoured.
	Ordered bool
	// Dedup: publishing a remembered Message.ID stores nothing.
	Dedup bool
	// SharedRateLimit: the driver implements RateLimiter, so a handler's
	// rate limit holds across processes.
	SharedRateLimit bool
	// Ephemeral: SubscriptionSpec.Ephemeral is honoured.
	Ephemeral bool
	// StartFrom: SubscriptionSpec.From is honoured (the driver keeps
	// history a new subscription can start from).
	StartFrom bool
}

// Stats are a subscription's counts, as kept by the backend.
type Stats struct {
	Handler   string
	Pattern   string
	Waiting   int64 // deliverable now
	Active    int64 // leased
	Delayed   int64 // waiting for a delay or retry backoff
	Completed int64 // completed and still retained
	// Failed counts failed attempts: across retained history on sqlite
	// and memory, since the subscription was created on Redis, which keeps
	// a counter instead of scanning its history.
	Failed int64
	Dead   int64 // in the dead-letter queue
	// OldestWaiting is the age of the oldest deliverable message.
	OldestWaiting time.Duration
	// Paused reports that the handler is paused (see Pauser).
	Paused bool
}

// DeadLetter is a message in a subscription's dead-letter queue.
type DeadLetter struct {
	Message
	Handler  string
	Attempts int
	Error    string
	// FirstAttempt and DeadAt bound the time the message was retried.
	FirstAttempt time.Time
	DeadAt       time.Time
}

// Inspector is implemented by drivers that report statistics.
type Inspector interface {
	Stats(ctx context.Context) ([]Stats, error)
}

// DeadLetterQueue is implemented by drivers that keep dead letters.
type DeadLetterQueue interface {
	// DeadLetters lists up to limit dead letters of a handler, oldest first.
	DeadLetters(ctx context.Context, handler string, limit int) ([]DeadLetter, error)
	// Requeue makes the given dead letters (all when ids is empty)
	// deliverable again with a fresh attempt budget. It returns how many.
	Requeue(ctx context.Context, handler string, ids []string) (int, error)
	// Purge deletes the given dead letters (all when ids is empty).
	Purge(ctx context.Context, handler string, ids []string) (int, error)
}

// Replayer is implemented by drivers that keep history.
type Replayer interface {
	// Replay makes every retained message of the handler's pattern
	// published at or after since that the handler has finished
	// (completed, or dead-lettered, which takes it out of the dead-letter
	// queue) deliverable to it again with a fresh attempt budget. A message
	// the handler has not finished (waiting, delayed or leased) is left as
	// it is. It returns how many were scheduled.
	Replay(ctx context.Context, handler string, since time.Time) (int, error)
}

// Unsubscriber is implemented by drivers that can delete a subscription.
type Unsubscriber interface {
	// Unsubscribe deletes the handler's durable subscription with every
	// event still queued for it and its dead letters. Messages published
	// afterwards are no longer kept for it. An unknown handler is an error
	// wrapping ErrNotFound.
	Unsubscribe(ctx context.Context, handler string) error
}

// ClaimResult is the answer to an idempotency claim.
type ClaimResult int

const (
	// Claimed: the caller holds the claim and may run the handler.
	Claimed ClaimResult = iota + 1
	// Done: the handler already succeeded for this event.
	Done
	// Busy: another attempt holds an unexpired claim.
	Busy
)

// Claimer is implemented by drivers that can keep idempotency claims
// atomically. A claim is keyed by (handler, event id).
type Claimer interface {
	// Claim atomically takes the claim for lease, unless it is done or
	// held by another unexpired claim.
	Claim(ctx context.Context, handler, eventID string, lease time.Duration) (ClaimResult, error)
	// Finish marks the claim done (success) or drops it so that a later
	// attempt may claim again.
	Finish(ctx context.Context, handler, eventID string, success bool) error
}

// RateLimiter is implemented by drivers with SharedRateLimit: a limit of n
// handler starts per period shared by every process of the handler.
//
// The bound is a sliding window: in every interval of length per, at most
// n reservations may have start times inside it, counted over every
// process. (A token bucket with burst n is not enough: it lets 2n start
// within one period.)
type RateLimiter interface {
	// Reserve takes one slot and returns how long the caller must wait
	// before using it (zero when it may start now). The slot's start time
	// is now plus the returned wait.
	Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error)
}

// Pauser is implemented by drivers that can pause a handler for every
// process that shares the backend. While a handler is paused its
// subscription keeps every message published for it, Receive hands out
// nothing (in every process, within about a second of Pause returning),
// and deliveries already leased finish and settle as usual. Resume makes
// it deliver again; nothing published meanwhile is lost. Pausing an
// unknown handler is an error wrapping ErrNotFound; pausing a paused one
// is not an error.
type Pauser interface {
	Pause(ctx context.Context, handler string) error
	Resume(ctx context.Context, handler string) error
}

// Advisor is implemented by drivers that can say how to get a semantic
// they do not give as opened, such as a broker transport that deduplicates
// only with a side store named in its URL. The core adds the advice to its
// refusal. option is the core's option name ("WithID", "Idempotent"); an
// empty answer means no advice.
type Advisor interface {
	Advice(option string) string
}

// TxPublisher is implemented by drivers that can publish inside a
// transaction of the application's own database (PublishTx): the messages
// are stored if and only if tx commits. tx is the caller's transaction
// (*sql.Tx, or pgx.Tx for a pgx-based driver); a driver refuses a tx of a
// kind or a database it cannot write to with an error that says which
// kinds it takes. Duplicate reporting is as for Publish, except that a
// duplicate found only at commit time cannot be reported.
type TxPublisher interface {
	PublishTx(ctx context.Context, tx any, msgs []*Message) error
}

// Retention bounds the history a driver keeps. Zero fields mean the
// driver's default; negative means keep nothing.
type Retention struct {
	CompletedCount int
	CompletedAge   time.Duration
	DeadCount      int
	DeadAge        time.Duration
	// DedupWindow is how long a published id is remembered.
	DedupWindow time.Duration
}

// Retention defaults, used for the zero fields of Retention. Every
// transport applies the same ones, so history behaves alike everywhere.
const (
	DefaultCompletedCount = 1000
	DefaultCompletedAge   = 24 * time.Hour
	DefaultDeadCount      = 10_000
	DefaultDeadAge        = 7 * 24 * time.Hour
	DefaultDedupWindow    = 24 * time.Hour
)

// Resolve returns r with zero fields replaced by the defaults and negative
// fields by zero, so a driver reads every field as "keep at most this
// many/this long".
func (r Retention) Resolve() Retention {
	count := func(v, def int) int {
		if v == 0 {
			return def
		}
		return max(v, 0)
	}
	age := func(v, def time.Duration) time.Duration {
		if v == 0 {
			return def
		}
		return max(v, 0)
	}
	return Retention{
		CompletedCount: count(r.CompletedCount, DefaultCompletedCount),
		CompletedAge:   age(r.CompletedAge, DefaultCompletedAge),
		DeadCount:      count(r.DeadCount, DefaultDeadCount),
		DeadAge:        age(r.DeadAge, DefaultDeadAge),
		DedupWindow:    age(r.DedupWindow, DefaultDedupWindow),
	}
}

// Config is what the core passes when opening a driver.
type Config struct {
	Retention Retention
	// MaxMessageSize is the largest Data the core will publish.
	MaxMessageSize int
	// Logger receives what a driver must report but cannot return as an
	// error (entries lost to trimming, foreign entries, background
	// failures). Never nil when the core opens a driver.
	Logger *slog.Logger
}

// Opener opens a driver from a URL.
type Opener func(ctx context.Context, url string, cfg Config) (Driver, error)

// ErrNotFound is returned by administration calls for an unknown handler.
var ErrNotFound = errors.New("not found")

// Errors a driver wraps so that the core, and through it the application,
// can tell these conditions apart whatever the backend. Package ripple
// exports the same values.
var (
	// ErrOutcomeUnknown: the connection failed after a publish was sent
	// and before its acknowledgement arrived, so the message may or may
	// not have been stored. Publishing it again with the same id (and
	// source) is safe: deduplication stores it at most once.
	ErrOutcomeUnknown = errors.New("outcome unknown: the event may have been stored; publishing it again with the same id is safe")
	// ErrStorageFull: the backend refused a write because its disk or
	// memory is full. Nothing of the failed call was stored.
	ErrStorageFull = errors.New("storage full")
	// ErrCorrupt: the backend's stored data is damaged (for SQLite, a
	// malformed database file). The error says what to do.
	ErrCorrupt = errors.New("store damaged")
)

// TxClaimer is implemented by drivers that can mark an idempotency claim
// done inside a transaction of the application's own database (the same
// transactions their TxPublisher takes): the mark commits with the
// handler's writes and its follow-up events, or not at all. CompleteTx
// writes the claim of (handler, key) as done in tx; when it is already
// done (committed by an earlier or a concurrent transaction) it stores
// nothing and returns an error wrapping ErrAlreadyDone. Two transactions
// marking the same claim must not both commit: the second waits on the
// first's row (or write lock) and then reports ErrAlreadyDone, or fails.
// key is IdentityKey(source, id). A claim taken with Claimer.Claim and
// not yet done is marked done by CompleteTx; Finish(false) leaves a done
// claim alone. Done reports, outside any transaction, whether the claim
// of (handler, key) is done; the core asks it before running a
// redelivered event.
type TxClaimer interface {
	CompleteTx(ctx context.Context, tx any, handler, key string) error
	Done(ctx context.Context, handler, key string) (bool, error)
}

// ErrAlreadyDone is wrapped by TxClaimer.CompleteTx when the claim is
// already done.
var ErrAlreadyDone = errors.New("already done")
