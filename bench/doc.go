// Package bench measures Ripple against other Go event and job systems on
// one workload, in one process run, so that every ratio it reports compares
// numbers taken side by side on the same machine at the same moment.
//
// # Workload
//
// Every system carries the same 200-byte JSON event to one counting handler
// (or, for the fan-out check, five) running at concurrency 10. Each
// scenario starts a fresh instance of the system in a fresh temporary
// directory, warms it up with a few events, and then measures:
//
//   - pub1: publish throughput, one goroutine awaiting each publish;
//   - pub16: publish throughput, 16 goroutines publishing concurrently;
//   - e2e1, e2e16: end-to-end throughput, from the first publish until the
//     handler has counted every published event, with 1 and 16 publishers;
//   - latency: publish-to-handler latency (p50 and p99) with events paced at
//     a fixed rate (1,000 events/s by default), and the publish calls' own
//     p50 and p99 in the progress line (the part spent before the event is
//     stored);
//   - fan5: for Ripple and Watermill's GoChannel (the peer that fans out
//     in memory), e2e16 with five handlers on the event type, compared with
//     e2e16 with one; reported as events/s and deliveries/s (five per
//     event).
//
// Two storage scenarios run only on the sqlite systems, and only when
// named (Config.Scenarios, -scenarios growth,bounded), since each handles a
// million events by default:
//
//   - growth: for each backlog size (10,000 and 1,000,000), in a fresh
//     file, the handler subscribes, the backlog is published by 64
//     publishers while no handler runs (untimed), and then, five times,
//     the handler starts on a fresh bus and handles the first events of
//     the backlog (20,000, capped at the smallest backlog so that every
//     size handles the same count), and the backlog is topped up again;
//     reported as the median drain rate and CPU time per event per size,
//     their ratios to the smallest backlog's, and the database, WAL and
//     shared-memory files' bytes per waiting event once the backlog is
//     published;
//   - bounded: 1,000,000 events published by 16 publishers to one running
//     handler, at full speed or (Config.BoundedMaxWaiting) waiting while a
//     number of events are not handled yet, the file sizes sampled every
//     100,000 handled events and every 100 ms for the maximum; once with
//     the default retention and once with DedupWindow and KeepCompleted
//     at 10 s.
//
// Handlers keep running while the publish-only scenarios publish, as they
// would in a deployed system. A publish phase stops after N events or after
// its time cap, whichever comes first, so slow systems still finish.
//
// # Systems
//
// A System opens instances that publish and deliver events. Ripple's
// transports share one adapter, RippleSystem, which needs only a URL per
// instance, so a new transport is one more entry in Systems. The peers are
// Watermill's GoChannel (the in-memory ceiling), River on SQLite, goqite,
// and a raw SQLite loop that commits one INSERT per transaction (the disk's
// ceiling for one awaited durable write).
//
// The Redis systems share one Redis server, given with -redis or
// RIPPLE_BENCH_REDIS_URL (RIPPLE_TEST_REDIS_URL in the project's tests):
// Ripple's redis transport, Watermill's redisstream, asynq, BullMQ (run by
// bench/bullmq/run.js in Node.js, which measures the same scenarios itself)
// and two raw go-redis XADD loops, one awaited XADD per publish and
// concurrent XADDs pipelined (Redis's ceilings). Each instance writes under
// its own fresh key namespace and deletes its keys when it closes. Without
// a Redis URL they are left out with a note.
//
// The RabbitMQ systems share one broker, given with -amqp or
// RIPPLE_BENCH_AMQP_URL (RIPPLE_TEST_AMQP_URL in the project's tests):
// Ripple's amqp transport (quorum and classic handler queues), Watermill's
// AMQP Pub/Sub (watermill-amqp, a durable queue config on a quorum queue
// with publisher confirms) and two raw amqp091 loops publishing to a
// quorum queue, one awaiting each confirm and one with concurrent
// publishers' confirms in flight together. Without a broker URL they are
// left out with a note.
//
// The PostgreSQL systems share one server, given with -postgres or
// RIPPLE_BENCH_POSTGRES_URL (RIPPLE_TEST_POSTGRES_URL in the project's
// tests), each instance in a fresh schema it drops when it closes: Ripple's
// postgres transport, River with riverpgxv5, Watermill SQL (Postgres schema
// and offsets adapters), a raw loop committing one single-row INSERT per
// publish (the ceiling for one awaited durable write) and a COPY of 100
// rows per transaction (the batched ceiling). When ripple-postgres runs,
// the command also measures what bus.PublishTx adds to a sequential
// transaction that inserts one user row (MeasureTxOverhead) and, with a
// Redis server, how fast the outbox relay moves events from a Postgres
// outbox to redis:// (MeasureOutboxRelay).
//
// The command github.com/ripplehq/ripple/bench/cmd/ripple-bench runs every
// system and prints the results as a markdown table, followed by Ripple's
// performance targets with the measured ratio of each.
package bench
