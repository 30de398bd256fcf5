// Package outbox is Ripple's transactional outbox: it makes
// ripple.Bus.PublishTx work on transports that do not live in the
// application's database (redis://, and the broker transports), so that
// the application's write and its event commit together whatever the
// transport.
//
//	pool, _ := pgxpool.New(ctx, "postgres://app@db/app")
//	ob, _ := outbox.NewPostgres(pool)
//	bus, _ := ripple.Open(ctx, "redis://localhost:6379/0", ripple.WithOutbox(ob))
//
//	tx, _ := pool.Begin(ctx)
//	tx.Exec(ctx, "INSERT INTO users …")
//	bus.PublishTx(ctx, tx, "user.signup.completed", signup)
//	tx.Commit(ctx)
//
// # How it works
//
// PublishTx writes the event as a row of the table messages, in the
// schema "ripple_outbox" (WithSchema changes it), with the caller's
// transaction (a pgx.Tx, or a *sql.Tx of pgx's database/sql driver), and a
// NOTIFY that wakes the relays when it commits. A rolled-back transaction
// leaves nothing. The table is created on first use.
//
// The relay (Postgres.Relay) runs inside every bus given WithOutbox, and in
// `ripple relay --from postgres://… --url redis://…` for teams that run it
// apart. Each pass is one transaction that takes the oldest rows, publishes
// them to the bus's transport with their own event ids in one Publish call,
// and deletes them in the same transaction, which commits only after the
// transport acknowledged them. So:
//
//   - a committed event reaches the transport at least once; one the relay
//     published but did not delete before it died is published again, and
//     the transport's publish deduplication (keyed by source and id, within
//     its dedup window, 24 hours by default) stores it once;
//   - a key's rows are moved only by the relay holding that key's advisory
//     lock, taken without waiting for the transaction, so several relays in
//     any number of processes never move one key's events at once and each
//     key leaves in the order its events were committed; rows without a key
//     are shared out with FOR UPDATE SKIP LOCKED.
//
// A relay wakes on the notification, and polls every second in case it
// missed one.
//
// # SQLite
//
// NewSQLite keeps the outbox in the application's SQLite database (table
// ripple_outbox), for a Level-1 application that moves to a broker but
// keeps its SQLite data. SQLite has no notifications, so its relays look
// every 50 ms, and a relay pass holds SQLite's write lock (one IMMEDIATE
// transaction) while it publishes its batch, which is how several relays
// keep a key in order: application writes may wait for one broker round
// trip.
//
// # Not supported
//
// PublishTx through the outbox cannot
// report a duplicate (Event.Duplicate), since the transport sees the event
// only after the commit. A delay (WithDelay) is measured from the PublishTx
// call; the relay hands the transport what is left of it.
package outbox
