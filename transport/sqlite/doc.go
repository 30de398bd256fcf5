// Package sqlite is Ripple's default transport: an embedded, durable event
// store and work queue in one SQLite file, with no server to run. Importing
// the package registers the "sqlite" URL scheme:
//
//	import _ "github.com/ripplehq/ripple/transport/sqlite"
//
//	bus, err := ripple.Open(ctx, "sqlite://app.db")
//
// The driver uses modernc.org/sqlite, a translation of SQLite to Go, so it
// needs no cgo and no C toolchain.
//
// # URL form
//
//	sqlite://app.db                        relative to the working directory
//	sqlite:///var/lib/app/ripple.db        absolute path
//	sqlite://app.db?synchronous=normal     faster commits, weaker durability
//
// The path is percent-decoded. The file is created when missing; its
// directory must exist. An empty path is an error, and so is ":memory:"
// (an in-memory SQLite database cannot be shared by the driver's
// connections; use the memory:// transport instead). The only query
// parameter is synchronous (full or normal, default full); any other
// parameter is rejected by name, so a typo never silently changes behaviour.
//
// The file belongs to Ripple. Opening a SQLite database that holds other
// tables, a file that is not SQLite at all, a damaged file, or a file written
// by a newer Ripple schema fails with an error that says which it is.
//
// # Durability
//
// The database runs in WAL mode. With synchronous=full (the default) every
// commit is flushed to stable storage (fsync) before Publish, Settle or any
// other write returns, so an acknowledged publish survives a process crash,
// a kernel panic and a power loss.
//
// With synchronous=normal the write-ahead log is flushed only at checkpoints:
// an acknowledged publish survives a crash of the process (the data is in the
// operating system's page cache and reaches the file), but the most recent
// commits can be lost if the machine loses power or the kernel crashes. The
// database itself is never corrupted in either mode.
//
// Delivery bookkeeping is the exception: a transaction that only leases
// rows for Receive, extends leases, settles outcomes (complete, retry,
// dead) or prunes history commits without fsync even at synchronous=full;
// the next durable commit flushes it, and a process crash never loses it.
// Losing it in a power failure only makes a delivery come back (a
// completed event is handled again, a retry comes sooner, a dead letter is
// tried once more), which at-least-once delivery allows, and it keeps the
// publish as the only fsync per event. Subscriptions, dead-letter
// administration and idempotency claims are as durable as publishes, so
// an Idempotent handler still runs to success at most once.
//
// Checkpoints (copying the write-ahead log into the database file) run in
// the writer between batches, after the callers of the last commit have been
// answered, rather than inside a commit.
//
// Writes are group-committed: a writer goroutine owns the single write
// connection and runs every write that is queued while the previous
// transaction commits in one transaction, then answers all the callers.
// Many concurrent publishers therefore share one fsync, and the events of a
// group are stored with shared multi-row statements. A caller that finds
// the connection idle, with no concurrent writers in sight, runs its
// transaction on its own goroutine instead, so a lone publisher pays for
// exactly one fsync and no goroutine hand-off.
//
// # Delivery semantics
//
// Each subscription (handler name) is a row in the database. Publish inserts
// the event once and one delivery row per subscription whose pattern matches
// the event type, in the same transaction; an event published before a
// subscription existed is never delivered to it. Receive leases deliverable
// rows (highest priority first, then publish order) for the subscription's
// lease; a lease that runs out, because its process crashed or hung, makes
// the row deliverable again with its attempt count increased. Delivery is
// therefore at least once.
//
// With an ordered subscription a row is deliverable only while no earlier
// row with the same non-empty key is waiting or leased, so a key's events
// are handled one at a time in publish order, and an event waiting for a
// retry holds back only its own key. Dead-lettered events do not block.
//
// Publishing an event id that is still remembered stores nothing: ids are
// remembered while any delivery of the event is retained and for at least
// the dedup window (Config.Retention.DedupWindow, default 24h).
//
// Delays (Message.Delay and retry backoff) are measured on the clock of the
// process that stores them.
//
// Completed and dead deliveries are kept for Retention's count and age
// (defaults: 1000 and 24h completed, 10000 and 7 days dead, per
// subscription) and deleted by a background pruner in small batches.
//
// # Capabilities
//
// Durable, Delay, Priority, Ordered and Dedup are supported. SharedRateLimit
// is not: a handler's rate limit holds per process. The driver also
// implements transport.Inspector, transport.DeadLetterQueue,
// transport.Replayer and transport.Claimer.
//
// # Multi-process use
//
// Several processes on one machine may open the same file: they share each
// handler's work (competing consumers), and fan-out is computed from the
// subscriptions of every process. A process notices another's writes by
// polling SQLite's data_version every 20ms, so cross-process delivery adds up
// to that latency; within one process a publish wakes receivers at once.
// Writers serialise on SQLite's file lock with a busy timeout and retry, so
// contention slows writes down but does not fail them. A process killed in
// the middle of a handler leaves its rows leased; they are delivered again
// when their leases run out. The file must be on a local file system: SQLite
// locking is unreliable on network file systems.
package sqlite
