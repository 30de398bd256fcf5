package transport

import "context"

// Outbox is a transactional outbox: the way PublishTx works on transports
// that do not live in the application's database (Redis, NATS, RabbitMQ,
// Kafka). Put writes messages into an outbox table with the application's
// own transaction, so they exist if and only if it commits; Relay moves
// committed messages to the bus's transport. Package
// github.com/ripplehq/ripple/outbox implements it for PostgreSQL.
//
// The core uses an Outbox (given with ripple.WithOutbox) for PublishTx
// when the driver is not a TxPublisher, and runs its Relay for as long as
// the bus is open.
type Outbox interface {
	// Put writes msgs into the outbox with tx, the caller's transaction
	// (*sql.Tx, or pgx.Tx for a pgx-based outbox). It refuses a tx of a
	// kind or a database it cannot write to with an error saying which
	// kinds it takes.
	Put(ctx context.Context, tx any, msgs []*Message) error
	// Relay moves committed messages to d until ctx ends, then returns
	// nil. It publishes the messages of one key in the order they were
	// put, each with its own id (so d's publish deduplication absorbs a
	// message relayed twice after a crash), and deletes a message only
	// after d.Publish acknowledged it. Several relays, in one process or
	// many, may run at once without reordering a key. It returns an error
	// only when it cannot run at all.
	Relay(ctx context.Context, d Driver) error
}
