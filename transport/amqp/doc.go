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
//	amqp://USER:PASSWORD@HOST:PORT/VHOST?namespace=NAME&queue_type=quorum&max_message_size=N
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
//     nodes) or classic (one node; a basic.get is about ten times cheaper,
//     so handlers consume several times faster, see below). Delay and
//     dead-letter queues are quorum queues either way. Changing it for an
//     existing handler is refused (the queue exists with other arguments):
//     delete the queue or use another namespace.
//   - max_message_size: the largest event payload Publish sends, in bytes
//     (default 134217728, RabbitMQ's own default max_message_size). Set it
//     to the broker's max_message_size when that is lower: a larger event is
//     refused before it is sent, with an error that says so, rather than
//     by the broker closing the channel.
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
//   - Deliveries are pulled with basic.get and acknowledged manually, so a
//     process never holds messages its handlers did not ask for: closing a
//     consumer, or a crash, gives nothing back with an attempt used that no
//     handler made (with basic.consume the broker sends ahead, and what it
//     sent ahead comes back counted). A basic.get on a quorum queue waits
//     for a Raft log write, so a Receive that found one message pulls the
//     rest of its batch on up to 16 channels at once; an idle handler polls
//     its queue's depth (a passive queue.declare, answered from memory)
//     with a backoff from 1 ms to 10 ms, and gets only when it is not
//     empty. Consumption is therefore
//     slower than with basic.consume, above all on quorum queues: measured
//     on a shared 2-core machine (bench, -systems amqp), end to end with 16
//     publishers one handler took about 1,700 events/s from quorum queues
//     and 4,200/s from classic ones, with p99 latencies of 10 ms and 5 ms at
//     1,000 events/s.
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
//     records are bookkeeping, published without waiting for confirms.
//   - Stats come from passive queue declares: waiting is the handler
//     queue's ready count, delayed the sum of its delay queues, dead,
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
//   - Unsubscribe deletes the handler's queue, delay queues, history and
//     dead letters.
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
//   - Publish deduplication (WithID) and idempotency claims (Idempotent):
//     RabbitMQ keeps no record a publish or a claim could be checked
//     against atomically, so both are refused rather than half-done. Use a
//     database-backed transport, or make the handler's side effect
//     idempotent by its own key.
//   - Replay and starting a subscription from history: queues keep no
//     history once acknowledged (a stream queue would; not used).
//   - Shared rate limits and pausing: the rate limit holds per process.
package amqp
