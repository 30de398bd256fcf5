// Package nats is Ripple's NATS JetStream transport. Importing it
// registers the nats:// and tls:// URL schemes:
//
//	import _ "github.com/ripplehq/ripple/transport/nats"
//
//	bus, err := ripple.Open(ctx, "nats://localhost:4222/myapp")
//
// It needs a nats-server (2.12 or later: it uses message scheduling and
// consumer pause) run with JetStream enabled (-js, or a jetstream block in
// its configuration), alone or as a cluster.
//
// # URL
//
//	nats://[user:password@|token@]host:port[/prefix][?param=value&...]
//	tls://...   the same over TLS
//
// User and password, or a token, go in the URL's user part; they are
// redacted from every error and log line. Parameters:
//
//   - prefix: the namespace (default "ripple", also settable as the URL's
//     path): 1 to 64 characters of [A-Za-z0-9_-]. Buses with the same
//     prefix share events, handlers and dead letters; different prefixes
//     on one server are isolated.
//   - replicas: JetStream replicas (1 to 5, default 1) for every stream
//     and bucket Ripple creates (consumers follow their stream); use 3 on
//     a three-node cluster. Without it, an existing namespace keeps its
//     replicas.
//   - history: file (default) or memory, the storage of the completed
//     history stream (what Stats.Completed counts and Replay re-delivers).
//     Every completion writes a copy there; with memory storage that write
//     needs no fsync, which makes completions, and most of all fan-out to
//     several handlers, much cheaper on a server with sync_interval:
//     always, at the price that a server restart forgets completed
//     history (never events still waiting, nor dead letters). A stream
//     created with one storage cannot be switched to the other: delete it
//     (nats stream rm ripple-PREFIX-done) first.
//   - servers: more seed servers of a cluster, comma-separated host:port.
//   - timeout: the connection timeout, and how long a JetStream API request
//     made without a deadline of its own may wait (default 5s).
//   - tls: true to require TLS (implied by tls://); tls_ca: a PEM file of
//     the certificate authorities to trust.
//
// Unknown parameters are refused.
//
// # Mapping
//
// For a prefix P, Ripple creates (or updates, when a bus opens):
//
//   - Stream ripple-P-events, file storage, interest retention, with
//     subjects P.ev.> (events: type T is published on P.ev.T, so the
//     pattern wildcards * and > are NATS's own), P.rq.> (a handler's own
//     queue: requeued dead letters, replays and released deliveries go to
//     P.rq.TOKEN) and P.sched.> (delayed messages, see below). Interest
//     retention keeps a message until every handler whose consumer matched
//     it has acknowledged it, so nothing waiting for a handler is ever
//     trimmed by a count or age limit.
//   - One durable pull consumer per handler, named h-TOKEN, filtering
//     P.ev.PATTERN and P.rq.TOKEN, with explicit acks, AckWait = the
//     handler's lease and no delivery limit (the core counts attempts).
//     TOKEN is the handler name with "_" written "_u" and "." written
//     "_d", which JetStream accepts in names and subject tokens and which
//     no two handler names share. The consumer's metadata records the
//     handler name and pattern; a consumer of that name without them is
//     refused as someone else's.
//   - Stream ripple-P-done (limits retention, at most KeepCompleted's
//     count per handler subject, for its age): a copy of each completed
//     event per handler, which Stats counts and Replay re-delivers from.
//   - Stream ripple-P-dlq (limits retention, KeepDead's count and age):
//     dead letters, one subject per handler, listed, requeued and purged
//     by the dead-letter calls.
//   - Stream ripple-P-ids (limits retention, file storage, kept for the
//     dedup window plus a minute): a copy of each event published with a
//     publisher-chosen id, on P.id.HASH (HASH: the SHA-256 of its
//     identity key), and confirmations naming the copy whose event was
//     stored, so that a duplicate publish can report the event as first
//     stored (see Publish below).
//   - Key-value buckets ripple-P-claims (idempotency claims, entries kept
//     for the dedup window) and ripple-P-state (failed-attempt counters
//     and shared rate-limit windows).
//
// Semantics:
//
//   - Publish sends each event with PublishMsgAsync and returns once the
//     stream acknowledged it. Nats-Msg-Id is transport.IdentityKey(source,
//     id) and the stream's duplicate window is the bus's dedup window, so
//     a (source, id) published again within it stores nothing. The
//     duplicate's PubAck names the stored message's sequence, which is
//     read back to report what was kept (Message.Duplicate) while a
//     handler still waits for it. After that, interest retention has
//     removed it, so for an event whose id the publisher chose (WithID)
//     Publish first writes a copy of it to the ids stream (above), and a
//     duplicate reports that copy: the one a confirmation names (written
//     in the background once the event's PubAck says it was stored, or by
//     the first duplicate that resolved it), else the earliest copy of the
//     identity. A publish that fails deletes its copy and a duplicate
//     deletes its own, so a copy whose event was never stored is left only
//     by a process that died between writing it and publishing the event,
//     or lost the connection with the publish in flight; only if, besides
//     that, the confirmation of the stored publish was lost too (its
//     process died right after the PubAck), can a duplicate report such a
//     copy. An event whose id Ripple generated gets no copy: only a retry
//     of the same publish repeats that id, so the message sent is the one
//     stored, and that is what a duplicate reports once the original is
//     gone. Cost: an event published WithID is written twice, its copy
//     first (one more stored write and round trip before Publish returns)
//     plus a small confirmation: one awaiting publisher's WithID publish
//     takes 2 to 3 times as long as one with a generated id on a server
//     with sync_interval: always (BenchmarkPublishIdentity), and the ids
//     stream holds each such event for the dedup window plus a minute. The
//     server also keeps every id of the window in memory (about a hundred
//     bytes each): a short DedupWindow keeps a busy server small.
//   - Attempts are JetStream's delivery count plus the attempts a
//     released copy carries. A lease is AckWait; Extend sends InProgress.
//     A delivery whose lease ran out can no longer retry, release or
//     dead-letter the message (it is its new holder's), only complete it.
//   - Complete acks in the background (Ack, not a round trip per event),
//     as the driver contract allows; Stats and Close first flush what is
//     on its way. An ack lost with a crash only makes the event come back.
//   - A delivery's FirstDelivered (a dead letter's FirstAttempt) is when
//     this driver first handed the event out, or, when an earlier attempt
//     ran elsewhere, when the event was stored: JetStream does not keep
//     the time of a message's first delivery.
//   - Retry is NakWithDelay(backoff): the message waits on the server and
//     does not block the consumer's other messages. Release (shutdown,
//     claim held elsewhere) acks the message and puts a copy recording the
//     attempts used on the handler's P.rq subject, so it costs no attempt.
//   - Dead copies the message, with the error, attempts and times, to the
//     dead-letter stream and acks it: JetStream's own MaxDeliver only
//     emits an advisory, so Ripple keeps the queue itself.
//   - Delay (WithDelay, WithTime, and released deliveries with a delay) use
//     the server's message scheduling (AllowMsgSchedules, a Nats-Schedule
//     "@at" header): the message waits on a P.sched subject, holding no
//     consumer slot, and the server publishes it to its target at its
//     time. A consumer named "scheduler" that is never read keeps interest
//     in P.sched.> so that interest retention stores the scheduled
//     messages. Times past 2200 are scheduled at 2200 and again from there
//     (the server keeps times in int64 nanoseconds). Due times are
//     computed on the publishing process's clock.
//   - Idempotency claims use KV Create (a free claim) and Update with the
//     revision read (an expired one), so two processes never both hold a
//     claim. The shared rate limit keeps each handler's last n start times
//     in one KV entry updated by compare-and-set: a sliding window across
//     processes, on their clocks.
//   - Stats come from consumer info: Waiting is NumPending, Active is
//     NumAckPending (leased deliveries and retries waiting for their
//     backoff, which JetStream does not tell apart), Delayed the scheduled
//     messages for the handler, Completed and Dead the handler's subjects
//     in the done and dead-letter streams, Failed the KV counter, Paused
//     the consumer's pause state.
//   - Pause and Resume pause the handler's consumer (server 2.11+), for
//     every process at once.
//   - Ephemeral subscriptions are consumers with an InactiveThreshold of a
//     few leases, in memory, marked ephemeral in their metadata, deleted
//     when this process's last receiver of one closes. A durable handler
//     and an ephemeral subscription never share a name: subscribing one
//     under the other's name is refused with an error, and neither's
//     consumer is updated or deleted by the other.
//   - Retention: completed history and dead letters by count and age as
//     the bus's KeepCompleted and KeepDead say (native stream limits).
//     The limits live on the streams: a bus that sets KeepCompleted,
//     KeepDead or DedupWindow applies them to the namespace when it opens,
//     and a bus that leaves them at their defaults (a tool such as ripple
//     stats) keeps what the namespace has, as it keeps its replicas and
//     history storage unless its URL names them.
//   - Replay re-delivers, from the handler's completed and dead-lettered
//     copies, those whose original was stored at or after the given time.
//
// # Durability
//
// Publish returns nil once the stream leader (and, with replicas > 1, a
// majority of the stream's replicas) has stored the event. Stored is not
// necessarily on disk: nats-server writes to its files at once but calls
// fsync only every sync_interval (two minutes by default). So:
//
//   - with jetstream { sync_interval: always }, an acknowledged event
//     survives the server process killed and the machine losing power;
//   - with the default, it survives the server process killed (the
//     operating system has the data), but a power loss or kernel crash can
//     lose the last interval's acknowledged writes on a single server, and
//     on a cluster if every replica loses power together (Jepsen, NATS
//     2.12.1, 2025: lazy fsync lost acknowledged writes);
//   - with replicas=3 on three machines, an acknowledged event survives
//     the loss of one node.
//
// Ripple's tests run the server with sync_interval: always. A publish
// whose acknowledgement is lost with the connection returns an error
// matching transport.ErrOutcomeUnknown: the event may be stored, and
// publishing it again with the same id is safe. A server out of storage
// answers with an error matching transport.ErrStorageFull.
//
// # Not supported
//
//   - Priority (WithPriority): a JetStream consumer delivers in stream
//     order; declared absent, so the core refuses it.
//   - Ordered(): per-key ordering would need a consumer per key or
//     partitioned subjects; declared absent, so the core refuses it.
//   - Starting a new handler from history (From): the events stream uses
//     interest retention, so it keeps no history beyond what handlers have
//     not finished; declared absent. Replay of a handler's own completed
//     history is supported.
//   - PublishTx: NATS is not the application's database.
//
// A message Ripple did not write that appears on its subjects is logged
// and terminated.
package nats
