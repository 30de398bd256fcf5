// Package kafka is Ripple's Kafka transport: Level 3, a retained log that
// new handlers can replay, with ordering per key. Importing the package
// registers the "kafka" URL scheme:
//
//	import _ "github.com/ripplehq/ripple/transport/kafka"
//
//	bus, err := ripple.Open(ctx, "kafka://localhost:9092")
//
// It is built on github.com/twmb/franz-go (kgo, kadm) and works with
// Apache Kafka and Redpanda alike.
//
// # URL form
//
//	kafka://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...][?PARAMS]
//
//	kafka://localhost:9092
//	kafka://k1:9092,k2:9092,k3:9092?namespace=billing&replication=3
//	kafka://app:secret@kafka.example.com:9093?tls=true&sasl=scram-sha-512
//
// The hosts are the bootstrap list (a port defaults to 9092). Parameters:
//
//	namespace=NAME        topic and group prefix (default "ripple"): several
//	                      applications or test runs share a cluster without
//	                      seeing each other. 1-200 of a-z A-Z 0-9 . _ -
//	partitions=N          partitions of the topics Ripple creates (default 4)
//	replication=N         their replication factor (default: the broker's
//	                      default.replication.factor)
//	retention=DURATION    retention.ms of the event topic when Ripple creates
//	                      it (default: the broker's log.retention, 7 days)
//	session_timeout=D     consumer group session timeout (default 6s, the
//	                      smallest Kafka accepts by default): how long a
//	                      crashed process keeps its partitions
//	dial_timeout=D        connection timeout (default 10s)
//	tls=true              connect over TLS, checking the broker's certificate
//	                      against the system's CAs (SSL_CERT_FILE adds one)
//	skip_verify=true      do not check it (tests only)
//	sasl=MECHANISM        plain (the default when the URL has a user),
//	                      scram-sha-256 or scram-sha-512
//	store=URL             the side store (package transport/sidestore):
//	                      the percent-encoded URL of a transport that
//	                      keeps atomic claims, shared by every process of
//	                      the bus, such as store=redis%3A%2F%2Fcache%3A6379%2F0
//	                      or a SQLite file or a postgres:// database; its
//	                      package must be imported (transport/all imports
//	                      every one). It keeps, under the namespace,
//	                      Idempotent() handlers' claims, the identities of
//	                      events published WithID (publish deduplication)
//	                      and shared rate-limit windows. Without it those
//	                      are refused (see Not supported)
//	store_env=VAR         the same, read from the environment variable VAR,
//	                      so that the store's password stays out of the
//	                      URL and out of the process's arguments (errors
//	                      and logs hide the password of the kafka URL and
//	                      of a store= value)
//	claims=URL,           older spellings of store= and store_env=, still
//	claims_env=VAR        accepted; giving two of the four is refused
//
// An unknown parameter is refused by name. Errors and logs never show the
// password. Open connects before it returns: a bootstrap list where no
// broker answers fails within the Open context with an error naming the
// hosts.
//
// # Mapping
//
//   - One topic per namespace, NAMESPACE.events, holds every event. The
//     event is written in the CloudEvents Kafka binding's binary mode: the
//     data is the record value, the attributes are ce_ headers (ce_id,
//     ce_type, ce_source, ce_time, ...), datacontenttype is content-type,
//     and the ordering key is the record key. Patterns match the ce_type
//     header, so a new event type needs no new topic and `*` and `>` work
//     without regex subscriptions. Any Kafka tool, or another Kafka
//     producer writing the same headers, interoperates.
//   - The record key chooses the partition with murmur2, like the Java
//     client's default partitioner (kgo's StickyKeyPartitioner with the
//     Kafka hasher), so Ripple and other producers agree on where a key
//     lives. Events without a key are spread over the partitions.
//   - Each handler name is a consumer group, NAMESPACE.HANDLER, consuming
//     the event topic and the handler's retry topic NAMESPACE.retry.HANDLER;
//     its dead letters go to NAMESPACE.dead.HANDLER (one partition). A
//     compacted topic NAMESPACE.subscriptions maps handler names to their
//     patterns (and holds their pause records and the entries of running
//     ephemeral handlers), for Stats, Replay and the dead-letter calls of
//     processes that do not run the handler. Handler topic names over Kafka's 249
//     characters, or colliding with an existing topic once '.' and '_' are
//     treated alike (as Kafka does), are refused with an error.
//   - The producer is idempotent with acks=all; Publish waits for the
//     acknowledgement.
//
// Broker features used: consumer groups (classic protocol) with offset
// commit metadata (offset.metadata.max.bytes, 4096 by default, is
// enough; commits are sent at OffsetCommit version 9 or lower, by topic
// name), the idempotent producer, ListOffsets by timestamp,
// CreateTopics, DeleteTopics, DeleteGroups, DescribeConfigs and a
// compacted topic. Kafka 2.x and newer and Redpanda provide them; the
// tests exercise kfake's implementation of the current protocol, not a
// real broker. Topic auto-creation is not needed.
//
// # Delivery
//
// Kafka assigns each partition to one process of a handler's group; within
// a process Ripple hands the partition's events to the handler's workers
// concurrently (several at once from one partition), and leases each in
// memory: a handler that hangs past its lease has its event delivered
// again to another worker, with the attempt counted. The group's committed
// offset of a partition is the lowest event not yet finished, so a crash
// re-delivers, never skips: after a crash the events from that offset on
// are handled again, but for those the last commit (at most 100ms old)
// knew finished. With the offset, the commit metadata lists the unfinished
// events after it with the number of attempts started for each (committed
// before the handler runs: an event whose count the broker does not take,
// during a rebalance say, is not handed out until it does), so an event
// whose process was killed comes back with its attempt counted, and the
// next owner of a partition handed over skips the events finished after
// the committed offset (a retried event's older copy, with its older
// attempt count, among them) as far as the list is complete (about 500
// events); it also carries the partition's counters for Stats. A process
// that stops gracefully waits for its running handlers of a partition
// taken away by a rebalance (up to 20s) and commits before giving it up; a
// process killed with SIGKILL keeps its partitions until its session times
// out (session_timeout).
//
// A failed attempt is retried without holding its partition back: the
// event is copied to the handler's retry topic with the time it is due
// and its attempt count, and its place in the event topic is finished.
// The retry topic is consumed by the same group; an event not yet due
// waits in the memory of the process that owns its partition. A delayed
// publish (WithDelay, WithTime) is written to the event topic with its
// due time and moved to the retry topic when it is more than a second
// away. The last attempt or a Permanent error copies the event to the
// dead-letter topic with the error, attempt count and times.
//
// Ordered() gives one event at a time per key, in partition (publish)
// order: a key's events share a partition, and a failing event stays in
// memory at its place, holding back only its own key. An Ordered
// handler's delayed events also wait in memory at their place, so a long
// delay holds back the partition's committed offset, and a crash
// re-delivers from there. Replayed and requeued events go through the
// retry topic and are not ordered with the rest.
//
// # Side store
//
// With store=, Open returns a StoreDriver. Publish claims each chosen id's
// identity (source and id) in the store, produces the event, and marks
// the identity published once Kafka acknowledged it: a publish of an
// identity marked published stores nothing and returns the event Kafka
// kept, marked Duplicate (read back from the end of the event topic; when
// it is no longer near the end, the event as resent is returned, with a
// log line). A publisher killed between the acknowledgement and the mark
// leaves the identity claimed for sidestore.ClaimLease (30s): a resend
// waits for it and, after it, is stored again (an Idempotent() handler
// absorbs that copy). A publish that fails with ErrOutcomeUnknown drops
// its claim, so its resend is produced again even when the first copy was
// stored. Generated ids cost the store nothing. Identities are remembered
// for the bus's DedupWindow, by the store. The store's Claim and Finish
// are Idempotent() handlers' claims, atomic as the store is; a handler's
// RateLimit is a sliding window in the store (Capabilities.SharedRateLimit)
// when the store keeps windows (sqlite, redis and postgres do). Every
// process of the bus must name the same store.
//
// # Durability
//
// Publish returns nil once every in-sync replica has the event
// (acks=all), so an acknowledged event survives the publishing process's
// crash and, with replication=3 and the broker's min.insync.replicas=2,
// the loss of a broker. Retry and dead-letter moves are acknowledged the
// same way before the original is finished. A publish cut off between
// send and acknowledgement returns an error wrapping
// ripple.ErrOutcomeUnknown: the event may be stored.
//
// # History
//
//   - Replay(handler, since) re-delivers, through the retry topic, every
//     event of the handler's pattern in the event topic with a timestamp
//     at or after since that the handler has finished (its offset is below
//     the committed one and no copy waits in the retry topic); replayed
//     dead letters leave the dead-letter queue.
//   - A new handler starts from now on by default; with
//     SubscriptionSpec.From it starts from the beginning of the retained
//     log or from the first event at or after a time (ListOffsets by
//     timestamp). An existing group keeps its offsets.
//   - The event topic keeps events for its retention.ms, whatever the
//     handlers have done (Driver.Retention reports it, and Open logs it): KeepCompleted does not delete Kafka records; it
//     bounds the completed history Stats reports (the events the handler
//     has passed within its age, at most its count and at most what the
//     handler completed). Dead letters honour KeepDead: older or surplus
//     ones are marked removed, and the dead-letter topic's retention.ms
//     is KeepDead's age.
//   - Dead letters are listed by reading the dead-letter topic; Requeue
//     copies them to the retry topic with a fresh attempt budget and then
//     appends a removal marker, Purge appends the marker alone. Two
//     processes requeueing the same letter at the same moment may both
//     copy it (one process serialises its own calls).
//
// # Ephemeral subscriptions
//
// An ephemeral subscription (ripple tail) is a consumer without a group
// that reads the event topic from its end offsets at Subscribe, in this
// process only: no consumer group, retry or dead-letter topic is created
// for it. Its retries wait in memory, and an event it dead-letters is
// dropped with a log line.
//
// So that Stats in every process lists it while it runs, it has an entry
// in the registry topic marked ephemeral (a ripple_ephemeral header) with
// the time until which it is live: 3 leases, at least 15s. The process
// renews the entry five times in that span while its receivers are open,
// and tombstones it when the last one closes (or the bus closes). A
// process killed with SIGKILL leaves an entry that goes stale; the next
// Stats (in any process) no longer lists it, tombstones it, and
// compaction removes it: nothing else is left behind. Other processes
// report an ephemeral handler's counts as zero (its state lives in its
// own process's memory); its own process reports what it holds. Dead
// letters, Replay, Pause and Unsubscribe do not apply to it and report it
// not found.
//
// An ephemeral subscription under the name of a durable handler (listed in
// the registry, or with a consumer group) is refused, and so is a durable
// one under the name of a running ephemeral handler (an entry not stale),
// so that neither removes the other's entry. A handler that runs in a
// process and sees its entry removed by another process (a Stats that
// reaped a stale ephemeral entry just as the name was taken again) writes
// it again.
//
// # Statistics
//
// Waiting, Active and Delayed count the partitions this process owns from
// its memory, and the others from the counts their owner last committed
// (at most every 100ms) plus the records it has not read (consumer lag,
// which for an unread stretch counts events of other types too). Failed
// counts failed attempts since the subscription was created.
//
// # Pause
//
// Pause and Resume append a pause/HANDLER record to the registry topic;
// every process follows that topic and stops (or resumes) handing out the
// handler's events within about a second. Events keep arriving in the
// topic meanwhile; deliveries already running finish as usual.
//
// # Not supported
//
//   - Priority (WithPriority): a partition is a log, delivered in order;
//     the core refuses it with ErrNotSupported.
//   - Without a store= side store: publish deduplication (WithID),
//     idempotency claims (Idempotent) and a rate limit shared across
//     processes. Kafka's idempotent producer only removes duplicates
//     within one producer session, and remembering every (source, id)
//     across producers, or a claim, needs an atomic check-and-insert that
//     Kafka does not have; the core refuses WithID and Idempotent() with
//     ErrNotSupported, the stream package refuses to register a stream
//     (its window results rely on deduplication), and each process limits
//     its own starts. Without Idempotent(), handlers on Kafka must
//     tolerate a redelivery.
//   - PublishTx.
//   - Unsubscribe deletes the group and the handler's topics only when no
//     process runs the handler.
//
// # Tests
//
// No Kafka broker can be installed on the machines that build Ripple, so
// the package's tests, the conformance suite (transporttest) included,
// run against franz-go's kfake, an in-process Kafka-protocol cluster of
// three brokers started by TestMain on free loopback ports; the crash
// tests' child processes reach it over TCP. Set RIPPLE_TEST_KAFKA_URL
// (kafka://host:port) to run the same tests against a real Kafka or
// Redpanda instead. kfake is imported only by the tests.
package kafka
