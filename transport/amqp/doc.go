// Package amqp is Ripple's RabbitMQ transport: importing it registers the
// amqp:// and amqps:// URL schemes. It is built on
// github.com/rabbitmq/amqp091-go and needs RabbitMQ 3.10 or later (quorum
// queues with message TTL and at-least-once dead-lettering).
//
//	import _ "github.com/ripplehq/ripple/transport/amqp"
//
//	bus, err := ripple.Open(ctx, "amqp://guest:guest@localhost:5672/?namespace=shop")
//
// # URL
//
//	amqp://USER:PASSWORD@HOST:PORT/VHOST?namespace=NAME&queue_type=quorum&max_message_size=N&store=URL
//	amqps://...   the same over TLS (the host name is verified)
//
// The path is the virtual host, URL-escaped ("/" is %2F; an empty path is
// the default vhost "/"). Credentials are redacted from every error and
// log line. Parameters:
//
//   - namespace: prefix of every exchange and queue the transport
//     declares (default "ripple"), so several applications or tests share
//     one vhost. Letters, digits, '.', '_' and '-'.
//   - queue_type: the handler queues' type, quorum (the default:
//     replicated Raft log, survives the loss of a minority of a cluster's
//     nodes) or classic (one node; no Raft log write per enqueue and
//     acknowledgement, so a single publisher's events are handled sooner;
//     see BENCHMARKS.md). Delay and
//     dead-letter queues are quorum queues either way. Changing it for an
//     existing handler is refused (the queue exists with other arguments):
//     delete the queue or use another namespace.
//   - max_message_size: the largest event payload Publish sends, in bytes
//     (default 134217728, RabbitMQ's own default max_message_size). Set it
//     to the broker's max_message_size when that is lower: a larger event is
//     refused before it is sent, with an error that says so, rather than
//     by the broker closing the channel.
//   - store: the percent-encoded URL of a store that keeps what RabbitMQ
//     cannot (see Store below): sqlite://FILE, redis://HOST:PORT/DB or
//     postgres://... (its package must be imported, or transport/all).
//     Every process of the bus must name the same store; memory:// and
//     amqp:// are refused, as is a transport that keeps no claims.
//   - store_env: the name of an environment variable holding the store's
//     URL, so that its password stays out of this URL. One of store and
//     store_env at most.
//
// Any other parameter is an error.
//
// # Mapping
//
//   - One durable topic exchange per namespace, NAMESPACE.events. An
//     event is published to it with its type as the routing key.
//   - One durable queue per handler name (quorum unless queue_type says
//     classic), NAMESPACE.h.HANDLER, bound
//     to the exchange by the handler's pattern: "*" stays "*" and a
//     trailing ">" (one or more segments) becomes "*.#". Every handler gets
//     every matching event (fan-out); processes running the same handler
//     take from the same queue (competing consumers).
//   - Each receiver consumes its handler's queue (basic.consume, manual
//     acknowledgements) with a prefetch of the deliveries it holds plus the
//     handler's free slots that Receive asks for (the largest such sum yet,
//     so at most the handler's Concurrency plus the outcomes the core has
//     queued and not yet recorded, whose deliveries are still
//     unacknowledged; the consumer starts again when it grows), so the
//     broker sends ahead only what free slots will take. What it sent ahead is handed
//     out by the next Receive. Sent ahead but not handed out, a message has
//     used no attempt, and is given back without one (a copy carrying the
//     attempts it had is published to the handler's queue and confirmed,
//     then the original acknowledged) when the receiver closes or its
//     handler is paused, and when it waited more than a second because the
//     process's slots are busy (a handler running past its lease holds
//     one), so that other processes take it. A quorum queue can still
//     deliver to a consumer after confirming its basic.cancel, and amqp091
//     drops such a delivery, which the broker would return counted; so a
//     closing receiver of a quorum queue first lets its prefetch fill up
//     (publishing transient filler messages, which whichever receiver gets
//     them drops, when the queue holds too few events), so nothing is in
//     flight to it when it cancels; from its last count of what it holds
//     to the cancel, no acknowledgement (an outcome recorded meanwhile)
//     gives it credit back: those wait for the cancel. A crash (kill -9, a lost connection)
//     returns what was sent ahead counted as an attempt: at most the
//     handler's free slots at that moment (at most its Concurrency, or the
//     core's receive batch if smaller) events per crashed process use one
//     attempt no handler made, the bound for a crash.
//   - Publish waits for publisher confirms before it returns nil. Concurrent
//     publishers share one confirm channel, so the broker confirms their
//     messages together (its own group commit).
//   - Attempts are counted in a ripple-attempts header: a retry is a new
//     copy carrying the attempts used so far. A delivery that comes back
//     to its queue (its process died, its lease ran out: the broker marks
//     it redelivered) is not handed out as it is: a copy carrying the
//     attempt it used replaces it first, so every copy returns at most once
//     and the count is exact on both queue types (quorum queues'
//     x-delivery-count also counts returns that used no attempt).
//   - Leases are Ripple's own: each process watches the deliveries it
//     holds and gives back (basic.nack with requeue) those whose lease ran
//     out without being settled or extended, so a hung handler's event is
//     delivered again after its lease (RabbitMQ's consumer_timeout is one
//     global setting and closes the whole channel, so it is not used). A
//     crashed process's connection closes and the broker returns all its
//     unacknowledged messages at once.
//   - Retries and delays, without the delayed-message plugin: per-handler
//     delay queues NAMESPACE.delay.HANDLER.MS (quorum, at-least-once
//     dead-lettering), each with one queue-wide TTL from 10 ms doubling up to
//     about 11.6 hours, dead-letter back into the handler's queue. Because
//     every message in a delay queue has the same TTL, the head always
//     expires first, and a retry never blocks other events. A wait goes to
//     the largest bucket not over the time left; a message that comes back
//     early (it carries its due time in ripple-not-before) waits again in a
//     smaller bucket. A delay is never early; it can be late by up to 10 ms
//     plus a few broker round trips per bucket used (about log2 of the
//     delay in 10 ms units). An event published with WithDelay is routed at
//     once, and each handler parks it in its delay queues.
//   - Dead letters: a per-handler quorum queue NAMESPACE.dead.HANDLER,
//     holding each message with the handler's last error, the attempts and
//     the first-attempt and dead-at times in headers. Listing reads it with
//     basic.get and puts the messages back; requeue publishes a copy to the
//     handler's queue with a fresh attempt budget, then removes the dead
//     letter; purge removes them. Retention: KeepDead's count and age become
//     the queue's x-max-length and x-message-ttl.
//   - Completed and failed history (Stats' Completed and Failed): the ids
//     of completed events and failed attempts go to NAMESPACE.done.HANDLER
//     and NAMESPACE.failed.HANDLER, durable classic queues bounded by
//     KeepCompleted's count (x-max-length) and age (x-message-ttl). These
//     records are bookkeeping, published on a channel without publisher
//     confirms.
//   - Stats come from passive queue declares: waiting is the handler
//     queue's ready count (events sent ahead to a receiver are not in it), delayed the sum of its delay queues, dead,
//     completed and failed the history queues' counts. Active counts only
//     the deliveries this process holds (AMQP does not report another
//     connection's unacknowledged messages), and OldestWaiting is not known
//     (zero). Stats lists every durable handler of the namespace: each
//     records itself (name and pattern) in a durable classic queue
//     NAMESPACE.handlers when it subscribes, which any process reads
//     (basic.get, then every message given back), so `ripple stats` works
//     from a process that runs no handler.
//   - Ephemeral subscriptions (ripple tail) are non-durable classic queues
//     with an x-expires of four leases (at least 10 s): the receiver's
//     Close deletes them with their delay and dead-letter queues, and the
//     broker reaps them once unused for that long (a process killed with
//     SIGKILL).
//   - Pause and Resume: a handler's pause flag is a durable classic queue
//     NAMESPACE.paused.HANDLER holding at most one message (Pause publishes
//     one and awaits its confirm; Resume purges it). Every receiver reads
//     the flag's depth with a passive queue.declare at least every 250 ms;
//     a paused receiver cancels its consumer, gives back what was sent
//     ahead (above) and hands out nothing, so every process stops within
//     about a quarter of a second; deliveries already leased finish and
//     settle as usual, and events keep arriving in the handler's queue.
//     Stats reports Paused from the flag. `ripple pause` and `ripple
//     resume` use it.
//   - Unsubscribe deletes the handler's queue, delay queues, history,
//     pause flag and dead letters.
//
// # Store
//
// RabbitMQ keeps no record that a publish or an idempotency claim could be
// checked against atomically, and no window shared by consumers. With
// store= (or store_env=), the driver keeps them in that store (package
// sidestore), under the namespace, and declares them:
//
//   - Publish deduplication (Capabilities.Dedup, WithID): an event whose
//     id the publisher chose is claimed in the store by its identity
//     (source and id) before it is sent, and the claim is marked done once
//     RabbitMQ confirmed it; a publish of an identity already done sends
//     nothing and reports a duplicate, for the dedup window (ripple.DedupWindow).
//     Generated ids are not recorded (they cannot repeat). The duplicate
//     reported is the message as resent, not the copy kept: RabbitMQ cannot
//     read a message back by id. A publisher that crashes between the
//     broker's confirm and the mark leaves a claim that expires after 30
//     s, after which a resend is stored a second time (an Idempotent()
//     handler then skips it).
//   - Idempotency claims (transport.Claimer, Idempotent()): taken and
//     marked in the store.
//   - The shared rate limit (Capabilities.SharedRateLimit,
//     transport.RateLimiter): a sliding window in the store, when the
//     store keeps one (sqlite, redis and postgres do).
//
// These records are exactly as durable as the store keeps them: a SQLite
// file on one machine (so every process must reach that file: one host),
// Redis as its persistence is configured (appendfsync always for no loss),
// PostgreSQL committed. Losing the store loses dedup records and claims,
// never events: a resent event is then stored again, and a handler runs
// again for an event whose claim was lost. Open opens the store and
// returns a *StoreDriver; Close closes both. Without a store, WithID and
// Idempotent() are refused with ErrNotSupported, and a handler's rate
// limit holds per process.
//
// # Durability
//
// When Publish returns nil, RabbitMQ has confirmed the event: it is
// written to every matching handler's queue as a persistent message. A
// quorum queue confirms once the write is fsynced in the Raft log of a
// majority of the queue's replicas; a classic durable queue once its node
// wrote it to disk. It survives a crash of the publishing process and a
// restart or crash of the broker node. On a single-node broker it does not
// survive the loss of that node's disk; run a three-node cluster with
// quorum queues for that (they replicate to three nodes by default; a
// classic queue lives on one node). An event that matches no
// handler's pattern when it is published is confirmed and dropped, as AMQP
// routes only to existing bindings: subscribe handlers before publishing.
//
// A publish whose confirm is lost (connection or channel closed, the
// context ended while waiting) returns an error wrapping
// transport.ErrOutcomeUnknown, never nil: the event may or may not be
// stored. A retry, delay or dead-lettering first publishes the new copy and
// waits for its confirm, then acknowledges the delivery; a crash in between
// delivers the event again (at least once, never lost).
//
// # Connections
//
// A driver holds two connections (publishing and administration;
// consuming), each re-dialled with backoff (50 ms doubling to 3 s) when
// lost; channels are reopened and the topology declared again on the next
// use. Publish waits for a reconnect within its context. While the broker
// blocks publishing (a memory or disk alarm, connection.blocked), Publish
// sends nothing and waits within its context, then fails with an error
// wrapping transport.ErrStorageFull that names the alarm.
//
// # Not supported
//
//   - Priority: quorum queues on RabbitMQ 3.10 have no priorities
//     (WithPriority is refused with ripple.ErrNotSupported).
//   - Ordered: not given (refused); a per-key order would need
//     single-active-consumer partitions.
//   - Without store=: publish deduplication (WithID), idempotency claims
//     (Idempotent) and shared rate limits (see Store).
//   - Replay and starting a subscription from history: queues keep no
//     history once acknowledged (a stream queue would; not used).
package amqp
