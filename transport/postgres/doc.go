// Package postgres is Ripple's PostgreSQL transport: the team's own
// database as a durable queue, with every semantic of Ripple's contract
// and transactional publishing (PublishTx). Importing the package registers
// the "postgres" and "postgresql" URL schemes:
//
//	import _ "github.com/ripplehq/ripple/transport/postgres"
//
//	bus, err := ripple.Open(ctx, "postgres://app:secret@db.internal:5432/app")
//
// It needs PostgreSQL 13 or newer and uses github.com/jackc/pgx/v5
// (pgxpool).
//
// # URL form
//
//	postgres://[USER[:PASSWORD]@]HOST[:PORT]/DBNAME[?PARAMS]
//
// Ripple's own parameter is:
//
//	schema=NAME   the PostgreSQL schema holding Ripple's tables (default
//	              "ripple"); lower-case letters, digits and _. Several
//	              applications, or test runs, can share a database with a
//	              schema each.
//
// Every other parameter goes to pgx: sslmode, connect_timeout,
// application_name, pool_max_conns (default 10 here), pool_min_conns,
// pool_max_conn_lifetime, statement_timeout and other run-time settings,
// and so on. pgx rejects what it does not know.
//
// # Mapping
//
// Ripple's tables live in their own schema, created on first Open and
// brought up to date by versioned migrations, applied under an advisory
// lock so that processes of one or several application versions starting
// together migrate once. A schema at a newer version than this build knows
// is refused with an error naming both versions; a schema holding tables
// that are not Ripple's is refused too.
//
//   - events: one row per published event, unique on (source, id), which is
//     publish deduplication: a second publish of a pair still stored stores
//     nothing and reports the kept event (Message.Duplicate).
//   - subscriptions: one row per handler name, with its pattern translated
//     to a regular expression. A publish is one statement that inserts the
//     events and a deliveries row for every subscription whose pattern
//     matches, so fan-out happens inside the database and a subscription
//     created by any process is seen by the next publish of every process.
//   - deliveries: one row per (subscription, event) with its state (ready,
//     leased, done, dead), attempts, lease and error. Receivers lease rows
//     with UPDATE … FOR UPDATE SKIP LOCKED in a PL/pgSQL function (one
//     round trip), so competing consumers in any number of processes never
//     wait for each other. Ordered subscriptions hold back a row while an
//     earlier row of its key is unsettled, and their lessors take turns on
//     a transaction-level advisory lock.
//   - claims (idempotency), rate_slots (the shared sliding-window rate
//     limit) and meta (the schema version).
//
// Every time is taken from the database's clock, so processes on hosts with
// different clocks agree on delays and leases.
//
// Wake-ups use LISTEN/NOTIFY. A publish or a settlement that makes rows
// deliverable wakes this process's receivers of the subscriptions
// concerned as soon as it commits, and then tells other processes with
// one NOTIFY naming them, sent after the commit rather than inside the
// transaction: PostgreSQL holds a database-wide lock from a notifying
// commit until its WAL flush is done, which would make every publish flush
// alone instead of sharing flushes (group commit). NOTIFYs of a busy
// process are coalesced (one in flight at a time), none is sent while no
// other session listens on the schema's channel (looked up at most once a
// second; the look that finds a new listener wakes all its subscriptions
// once), and a driver's listener skips its own. Each driver keeps one
// listening connection, whose application_name is "ripple listener" and a
// token of the driver's (that is how the look tells it from other
// processes' listeners), reconnected when it drops (after which every
// receiver looks again). A safety poll of one second covers a notification
// lost meanwhile, or one never sent because its process crashed right
// after the commit. A receiver also wakes exactly when a delay, backoff or
// lease runs out, and one whose last lease found fewer rows than it asked
// for waits for a wake-up (or that time) instead of asking again at once.
// PublishTx's notification is
// part of the caller's transaction, so that it fires when that commits.
//
// Group commit: concurrent Publish calls of a process are gathered into
// one multi-row INSERT … SELECT FROM unnest(…) statement, with at most two
// such statements under way at once: while one commits, the publishes
// arriving meanwhile queue and go together in the next, so a burst of
// publishers costs one round trip and one WAL flush per group. Concurrent
// settlements are gathered the same way into one UPDATE.
//
// # Durability
//
// Publish returns nil once the statement holding the event has committed.
// With PostgreSQL's defaults (fsync=on, synchronous_commit=on) that means
// the commit record is flushed to the WAL on disk: an acknowledged publish
// survives a crash of the application, of PostgreSQL and of the machine.
// With synchronous_commit=off (set on the server, the database or the
// user) it survives a crash of the application but PostgreSQL may lose the
// last few hundred milliseconds of commits when it crashes; with
// synchronous replication it also survives the loss of the primary.
// Delivery bookkeeping (leases, lease extensions and outcomes) commits with
// synchronous_commit=off for its own transaction: a crash of PostgreSQL
// can lose the last few hundred milliseconds of it, which only makes the
// events concerned come back (at-least-once delivery allows that), and
// spares every event two WAL flushes. Idempotency claims, which decide
// exactly-once effects, commit synchronously.
// A connection lost after the publish was sent and before its answer makes
// Publish fail with an error wrapping transport.ErrOutcomeUnknown
// (ripple.ErrOutcomeUnknown): publishing the same event again is safe.
// A publish that never reached the server is retried on another
// connection within the caller's context.
//
// # PublishTx
//
// The driver implements transport.TxPublisher: ripple's Bus.PublishTx
// takes a pgx.Tx (pgx/v5 or pgxpool) or a *sql.Tx opened through pgx's
// database/sql driver (github.com/jackc/pgx/v5/stdlib, driver name "pgx")
// on the bus's database, and writes the event with the transaction, so it
// is stored if and only if the transaction commits. The notification is
// part of the transaction, so handlers wake when it commits. A transaction
// on another database (or one without this schema), an already finished
// transaction, or another kind of value is refused with an error saying so.
// The check is part of the publish statement: on a database without the
// schema that statement fails, and, as after any failed statement, the
// transaction can then only be rolled back.
//
// A handler can mark its event done in the same kind of transaction
// (ripple.Bus.CompleteTx, transport.TxClaimer): an upsert of its row in the
// claims table, the one Idempotent() uses, so the mark commits with the
// handler's writes and events or not at all. A second delivery's upsert
// waits on the first transaction's row; once that commits it finds the
// mark and gets transport.ErrAlreadyDone (at REPEATABLE READ or
// SERIALIZABLE, a serialization failure). Done marks are pruned after the
// dedup window.
//
// # Retention and vacuum
//
// A pruner in every process (one at a time, on a try-lock) deletes, every
// second and in batches of 1000 rows, completed and dead deliveries beyond
// the retention count or age, events past their dedup window that no
// delivery needs, old idempotency claims and ephemeral subscriptions whose
// process died. Deleting in small batches leaves dead tuples in small
// amounts that autovacuum reclaims as it goes: the deliveries table is
// created with fillfactor 80 (room for the state updates of a row's life
// to stay on its page) and a vacuum scale factor of 2% with no cost delay,
// and events with 5%, so autovacuum runs after a few thousand changes
// rather than after a fifth of the table. Autovacuum looks at a table at
// most once a minute, and every lease and settlement leaves a dead row
// version whose entry in the ready index each later lease walks over: so
// the pruner also vacuums the deliveries table itself (VACUUM (SKIP_LOCKED,
// TRUNCATE false), a no-op for a role that does not own it) whenever it
// holds 2,000 dead rows. The table holds only undelivered rows and the retained history,
// so that vacuum is small. A database whose autovacuum is
// turned off will bloat: keep it on.
//
// # Not supported
//
// Everything in transport.Capabilities is supported. An ephemeral
// subscription is deleted when the last receiver of it in the process that
// closes it closes; sharing one ephemeral name across processes is not
// supported. A handler name is durable or ephemeral: an ephemeral
// subscription under a durable handler's name is refused, and so is a
// durable one under the name of an ephemeral one still in use (one whose
// process died gives way). Replay and From compare with publish times
// stored in whole microseconds of the database's clock, so their bound is
// rounded down to its microsecond. Pausing takes effect
// at each receiver's next look (at once for idle receivers of this
// process, within the safety poll elsewhere). Stats counts each state with
// an index scan, which grows with retained history.
package postgres
