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
// The file belongs to Ripple, which creates its tables in it; the
// application may add tables of its own to a Ripple file (see "Publishing
// inside the application's transaction"), but opening a SQLite database
// that has other tables and no Ripple tables, a file that is not SQLite at
// all, or a file written by a newer Ripple schema (both versions are
// named) fails with an error that says which it is. A file written by an
// older Ripple schema is migrated in place, in one transaction, when it is
// first opened.
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
// Never delete the -wal and -shm files beside the database file, and never
// copy the database file without them while a process has it open: after
// a crash the write-ahead log holds acknowledged events that are not in
// the main file yet, and deleting it silently loses them. To back up,
// copy the three files while no process runs, or use SQLite's online
// backup (VACUUM INTO).
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
// Checkpoints (copying the write-ahead log into the database file) run
// off the publishers' path: the write connection has SQLite's automatic
// checkpoint off, and a maintenance goroutine on a connection of its own
// runs a PASSIVE checkpoint after every 64 commits of the process (or a
// second after a smaller tail); it never waits for a lock and never blocks
// the writer. The WAL is bounded: SQLite rewinds it only when a write
// transaction begins with every frame copied, which a busy writer almost
// never sees, so when the WAL passes 2048 pages (8 MiB at the default page
// size) the writer checkpoints once between two transactions (the frames
// are nearly all copied by then) and the next transaction rewinds the
// WAL; and when no checkpoint has reached the end of the WAL for 128
// commits (the maintenance goroutine did not get its turn) the writer
// checkpoints itself. Past twice the bound with every frame copied (with
// several processes, one's writer keeps committing between the other's
// checkpoint and its next transaction), the writer asks for a RESTART
// checkpoint, which makes the next transaction of any process rewind the
// WAL. Measured with 16 publishers writing flat out, the WAL stays under
// 20 MB (it reached 100-200 MB in 4 s without the bound).
// After a write fails for a full disk, checkpoints wait 64 commits:
// copying the WAL grows the database file, which would take the space
// just freed from the writes that need it.
//
// Writes are group-committed: a writer goroutine owns the single write
// connection and runs every write that is queued while the previous
// transaction commits in one transaction, then answers all the callers.
// Many concurrent publishers therefore share one fsync, and the events of a
// group are stored with shared multi-row statements. A caller that finds
// the connection idle, with no concurrent writers in sight, runs its
// transaction on its own goroutine instead, so a lone publisher pays for
// exactly one fsync and no goroutine hand-off. While a publisher
// publishes back to back (a publish pending, or the last one returned
// less than 200µs ago on average), the delivery bookkeeping of this
// process (leases, settlements, lease extensions) does not commit between
// its publishes: it is parked, and the next publish runs it in its own
// transaction once 2ms have passed or 16 events have been published
// since; with no publish to join, it commits on its own within 4ms. A
// paced publisher is never back to back, so its handlers see no delay.
//
// # Delivery semantics
//
// The events table is an append-only log: Publish writes each event once,
// whatever the number of handlers, and its rowid (seq) is its position.
// Each subscription (handler name) is a row with a head: the position up
// to which it has taken the log. Everything after the head that matches
// its pattern is waiting, at no cost per handler. A lease takes a batch
// from the log into one windows row (up to 64 events: their seqs, a
// settled bit each, the count still open and the count completed) and
// moves the head past it; completing the batch is one update of that row,
// so a handler's progress costs writes per batch, not per event. Rows in
// deliveries exist only for the exceptions: events retried, released or
// dead-lettered, the open events of a window whose lease ran out, events
// written at publish (delayed and prioritised ones, and every event of an
// ordered handler, below) and events made deliverable again by Replay:
//
//	events (the log, written once)   subscriptions
//	seq  type          run_at        id  name    pattern  head
//	 41  user.created  0              1  mailer  user.*    45
//	 42  order.paid    0              2  audit   >         42
//	 43  user.created  0
//	 44  user.created  0             windows (per lease from the log)
//	 45  user.created  0             sub  lo  seqs      open  settled  completed
//	 46  user.created  +5m (delayed)   1  41  41,43     0     11       2
//	                                   1  44  44,45     1     01       0   (45 leased)
//	deliveries (exceptions only)
//	sub seq state    attempts
//	  1  44 waiting  1   (a retry of 44, out of its window)
//	  1  46 waiting  0   (delayed, run_at +5m)
//	  2  46 waiting  0   (delayed)
//
// Here mailer has completed 41 and 43, is running 45 and will retry 44;
// audit's next lease takes 43, 44 and 45 from the log (46 waits for its
// time as a row). One event's life, for one unordered handler:
//
//	Publish ──► events row (seq n), nothing per handler
//	   │           (delayed or prioritised: also a waiting row per
//	   │            unordered handler, leased before the log)
//	Receive ──► scan the log from head, filter by pattern in Go:
//	   │        one windows row for the batch, one UPDATE of head
//	   ├─ Complete ► the window's settled bit and completed count
//	   │             (one UPDATE for every completion of the batch)
//	   ├─ Retry/Release ► leaves the window: a waiting row with run_at
//	   ├─ Dead ► leaves the window: a dead row (the dead-letter queue)
//	   └─ lease runs out (process killed) ► the window's open events
//	      become ready rows, their attempt counted, and are leased again
//
// A lease looks at the rows first (one read), except for a subscription
// the writer knows to have none: found so by an earlier lease, with no
// row written since on its connection (temp triggers say so), no commit
// by any other connection or process since (the file's data version says
// so), and no window of its lease past its end. The log entries this
// process published are walked in its memory rather than scanned from
// the file, and the events read back only when not there.
//
// A lease takes, in order: rows whose lease ran out; waiting rows of
// priority 0 and above (highest first); the log after the head; waiting
// rows of negative priority. A subscription sees every event published
// after it was created (its head starts at the newest event, under the
// write lock, so no publish of any process falls between); an event
// published before is never delivered to it (unless From says so). A
// lease that runs out, because its process crashed or hung, makes the row
// deliverable again with its attempt count increased (a row's own count;
// a window's open events come back as rows). Delivery is therefore at
// least once. Receivers of one handler in several processes share the
// head: each lease moves it inside its write transaction. A settlement
// from a lease that ran out and was taken over changes nothing: a row's
// lease generation, and a window event's settled bit, say it is stale.
//
// An ordered subscription does not read the log: a publish writes it a
// row for every matching event, with the event's key, in publish order
// (per-key order needs per-event state anyway, and rows written at
// publish are in log order whatever the backlog), and a lease takes from
// the rows. A row is
// deliverable only while no earlier row with the same non-empty key is
// waiting or leased, so a key's events are handled one at a time in
// publish order, and an event waiting for a retry holds back only its own
// key. Dead-lettered events do not block. A row inserted behind an
// unsettled row of its key is marked held, and triggers release the oldest
// unsettled row of a key whenever a row of the key settles or goes back to
// waiting; a lease scans only rows not held and checks each candidate's
// key with two index probes, so leasing the head of a key costs the same
// whether one or 100,000 events wait behind it. A handler whose ordering
// changes is converted when it subscribes: one that becomes ordered takes
// the events waiting for it in the log into rows with their keys.
//
// An event's identity is its source and id together (CloudEvents): the
// same id under another source is another event. Publishing an identity
// that is still remembered stores nothing and sets Message.Duplicate to the
// event as first stored. Identities are remembered while any delivery of
// the event is retained and for at least the dedup window
// (Config.Retention.DedupWindow, default 24h).
//
// A subscription created with SubscriptionSpec.From starts from history:
// every retained event of its pattern published at or after From is
// delivered to it, then everything published afterwards. An unordered
// one starts with its head before the first event published at or after
// From (found by bisecting the log, which is in publish order; with
// clocks that step back between publishes the cut follows the log's
// order), so reading history writes nothing per event; the delayed and
// prioritised events among them get rows, as at publish. An ordered one
// gets a row for each event. Events are retained for the dedup window,
// longer while a deliveries row of theirs is retained, and always while
// some subscription's head has not passed them (they are still waiting
// for it) or an open lease window holds them. A retry scheduled far ahead
// keeps only its own event: the log around it is pruned as usual.
//
// Delays (Message.Delay and retry backoff) are measured on the clock of the
// process that stores them.
//
// Completed and dead deliveries are kept for Retention's count and age
// (defaults: 1000 and 24h completed, 10000 and 7 days dead, per
// subscription) and deleted by a background pruner in small batches.
// Completions from the log are history as counts in closed windows, which
// need no event: Stats counts them, and KeepCompleted trims them, after
// the completed rows (events completed after a retry), which are the
// ones that keep their events. Replay does not need that history: it
// makes every retained event of the pattern deliverable again.
//
// # Capabilities
//
// Durable, Delay, Priority, Ordered, Dedup, SharedRateLimit, Ephemeral and
// StartFrom are supported. The driver also implements
// transport.Inspector, transport.DeadLetterQueue, transport.Replayer,
// transport.Unsubscriber, transport.Claimer, transport.RateLimiter,
// transport.Pauser and transport.TxPublisher.
//
// Shared state lives in the file, so every process on it honours it:
//
//   - Pause and Resume set a flag on the subscription that every lease
//     reads inside its write transaction: once Pause returns no process
//     leases another delivery of the handler (deliveries already leased
//     finish and settle); Resume wakes this process's receivers at once and
//     other processes' within the poll interval. Stats reports Paused.
//   - The rate limit is a sliding window: the table rate_starts holds the
//     start times every process reserved for the handler, and a new start
//     goes one period after the n-th latest of them, so no interval of
//     length per holds more than n reserved starts. Each reservation is one
//     write transaction without fsync.
//   - An ephemeral subscription (ripple tail) is deleted with everything
//     queued for it when the last receiver of this process closes, or when
//     the driver closes. Its receivers touch it while they wait, and any
//     process's pruner deletes one that no receiver has touched for three
//     leases: a process killed with SIGKILL leaves nothing behind for long.
//
// # Publishing inside the application's transaction
//
// The application can keep its own tables in the bus's database file and
// publish inside its own transactions (ripple.Bus.PublishTx): the event is
// stored if and only if the transaction commits. DB returns the bus's
// *sql.DB (also reachable as bus.As(&db) with a db of type *sql.DB):
//
//	db, err := sqlite.DB(bus)
//	tx, err := db.BeginTx(ctx, nil)
//	_, err = tx.ExecContext(ctx, `INSERT INTO users (id, email) VALUES (?, ?)`, id, email)
//	_, err = bus.PublishTx(ctx, tx, "user.signup.completed", signup)
//	err = tx.Commit()
//
// Its transactions begin IMMEDIATE (they take SQLite's write lock at BEGIN,
// waiting up to 5s for another writer), so keep them short: while one is
// open no other write, publish or lease of any process can commit (they
// wait for it, up to a minute, so use PublishTx rather than Publish
// inside it). A
// transaction from any database/sql pool opened on the same file works
// too; one on another file, a closed transaction or anything but a *sql.Tx
// is refused with an error that says so. Receivers in this process are
// woken by a commit hook on DB's connections, within about a millisecond
// of the commit; a commit through another pool, or in another process, is
// noticed within the poll interval (20ms). A duplicate identity already
// stored is reported in Message.Duplicate as for Publish.
//
// A handler can also mark its event done in such a transaction
// (ripple.Bus.CompleteTx, transport.TxClaimer): the mark is the handler's
// row in the claims table, the one Idempotent() uses, written done by the
// transaction, so it commits with the handler's writes and events or not
// at all. The write lock the transaction holds from BEGIN serialises two
// deliveries of one event: the second finds the mark and gets
// transport.ErrAlreadyDone. Done marks are pruned after the dedup window.
//
// # Full disks and damaged files
//
// A write refused because the disk is full, and an Open on a full disk,
// fail with an error matching transport.ErrStorageFull that says "disk
// full"; nothing of the failed call is stored, and writes succeed again
// once space is freed.
//
// A damaged database file (a disk or file-system fault, a file copied
// without its -wal file) is reported with errors matching
// transport.ErrCorrupt that say what to do. An event row on a damaged page
// does not stall its handlers: its delivery is dead-lettered with SQLite's
// error and the readable events behind it keep flowing. From then on the
// driver logs the damage (at most once a minute) and Stats returns the
// counts with an error matching ErrCorrupt. Check runs SQLite's integrity
// check and Salvage copies what is readable into a new file; the command
// line is `ripple check --url sqlite://PATH [--salvage NEW.db]`. The
// damaged events are lost unless restored from a backup.
//
// # Multi-process use
//
// Several processes on one machine may open the same file: they share each
// handler's work (competing consumers), and fan-out needs no bookkeeping:
// every subscription of every process reads the one log. On Linux a commit
// that makes something deliverable wakes the other processes at once,
// through one Unix datagram socket per process in the directory
// <file>.wake beside the database (see internal/xwake); everywhere, and as
// the backstop for a lost wake-up, a process also polls SQLite's
// data_version every 20ms. Within one process a publish wakes receivers at
// once. Writers serialise on SQLite's file lock: the write connection has
// busy_timeout 0 and retries BEGIN IMMEDIATE itself with sleeps from 50µs
// up to 2ms (SQLite's own busy handler sleeps up to 100ms at a time; Go's
// timers make a sleep under a millisecond about 1.1ms on Linux), so
// contention slows writes down a little but does not fail them. A process killed in
// the middle of a handler leaves its rows leased; they are delivered again
// when their leases run out. The file must be on a local file system: SQLite
// locking is unreliable on network file systems.
//
// # Schema versions
//
// The file records its schema version. Version 2 keys events on (id,
// source) and adds the pause, ephemeral and rate-limit state; version 3
// adds the held mark of ordered deliveries with its triggers and marks the
// rows already waiting behind their key; version 4 makes the events table
// the log (head on subscriptions, run_at on events; every existing row
// keeps its state and every head starts at the newest event, since a
// version-3 file already has a row for every delivery); version 5 adds
// the lease windows and an index of delayed and prioritised events (the
// rows of version 4 keep their meaning). Older files are migrated in
// place, one version at a time, on first open. A newer version than this
// build knows is refused, naming both. Stop the processes of an older
// Ripple before a newer one first opens the file: once it is migrated,
// their writes fail.
package sqlite
