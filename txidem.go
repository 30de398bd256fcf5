package ripple

import (
	"context"

	"github.com/ripplehq/ripple/transport"
)

// ErrAlreadyDone is returned by CompleteTx when the handler has already
// done the event: an earlier delivery's transaction (or a concurrent
// one's) committed its done mark first. The handler must roll its
// transaction back and return nil.
var ErrAlreadyDone = transport.ErrAlreadyDone

// CompleteTx records, inside tx, that the handler running under ctx has
// done the event it is handling: "transactional idempotency". A handler
// that writes to its own database, publishes its follow-up events with
// PublishTx and calls CompleteTx, all in one transaction, has exactly-once
// effects on that database: the writes, the events and the done mark
// commit together or not at all, and a redelivery of an event whose
// transaction committed (say the process was killed after the commit and
// before the bus acknowledged the delivery) changes nothing.
//
// ctx must be the handler's ctx (or derive from it); tx is the same
// transaction PublishTx takes: a *sql.Tx on the bus's database
// (sqlite.DB(bus) on sqlite://), or a pgx.Tx or pgx-stdlib *sql.Tx on the
// bus's database on postgres://. Call it before committing, typically
// first, so a duplicate stops the handler before it does any work.
//
// When the mark already exists, CompleteTx writes nothing and returns an
// error matching ErrAlreadyDone: roll tx back and return nil. Two
// deliveries of one event running at once cannot both commit: the second
// one's CompleteTx waits for the first transaction and then returns
// ErrAlreadyDone (or, when the first rolled back, goes ahead). On a
// transport that does not keep its claims in the application's database
// (memory, redis, nats, amqp, kafka) it returns an error matching
// ErrNotSupported naming the transport; outside a handler it returns an
// error matching ErrInvalidOption.
//
// CompleteTx works whether or not the handler is registered with
// Idempotent(); both use one record per (handler, event source, event id).
// Without Idempotent(), the bus reads the record before running a
// redelivery (an attempt after the first) and skips, completing it, a
// delivery whose event is marked done; deliveries running at the same
// time are left to CompleteTx, as above. With Idempotent(), the bus claims
// the record before every attempt: a done event is skipped, and a
// concurrent delivery waits for the claim instead of running beside the
// first; the handler still calls CompleteTx, which turns the bus's claim
// into the done mark inside tx. A done mark is kept for the dedup window
// (DedupWindow), like Idempotent()'s claims; a redelivery after that runs
// the handler again.
func (b *Bus) CompleteTx(ctx context.Context, tx any) error {
	if ctx == nil {
		return invalidOption("CompleteTx: ctx is nil; pass the handler's ctx")
	}
	ev := eventFromContext(ctx)
	if ev == nil || ev.Handler == "" {
		return invalidOption("CompleteTx: ctx is not a handler's context; call CompleteTx from inside a handler, with the ctx it was given")
	}
	if tx == nil {
		return invalidOption("CompleteTx: tx is nil; pass the *sql.Tx (or pgx.Tx) the handler's writes commit with")
	}
	b.mu.Lock()
	_, mine := b.handlers[ev.Handler]
	b.mu.Unlock()
	if !mine {
		return invalidOption("CompleteTx: handler %q is not registered on this bus; call CompleteTx on the bus that runs the handler", ev.Handler)
	}
	tc, ok := b.driver.(transport.TxClaimer)
	if !ok {
		return &NotSupportedError{Transport: b.driver.Name(), Option: "CompleteTx",
			Hint: "transactional idempotency needs a transport that keeps its claims in the application's database (sqlite://, postgres://); Idempotent() skips redeliveries of events a handler already handled on any transport"}
	}
	if err := tc.CompleteTx(ctx, tx, ev.Handler, transport.IdentityKey(ev.Source, ev.ID)); err != nil {
		return b.wrapDriverErr("CompleteTx", err)
	}
	return nil
}
