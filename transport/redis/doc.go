// Package redis is Ripple's Redis transport, built on Redis Streams and
// consumer groups, for teams that already run Redis. Importing the package
// registers the "redis" and "rediss" (TLS) URL schemes:
//
//	import _ "github.com/ripplehq/ripple/transport/redis"
//
//	bus, err := ripple.Open(ctx, "redis://localhost:6379/0")
//
// It needs Redis 7 or newer and uses github.com/redis/go-redis/v9.
//
// # URL form
//
//	redis://[USER:PASSWORD@]HOST[:PORT][/DB][?PARAMS]
//	rediss://…                             the same over TLS
//
//	redis://localhost:6379/0
//	redis://:secret@cache.internal:6379/2?prefix=billing
//	rediss://app:secret@redis.example.com:6380/0
//
// The port defaults to 6379 and the database to 0. Ripple's own query
// parameters are:
//
//	prefix=NAME           key namespace (default "ripple"): every key Ripple
//	                      writes starts with "NAME:", so several applications
//	                      (or test runs) can share one Redis database.
//	                      Letters, digits and _ - . : only.
//	allow_eviction=true   accept a server whose maxmemory-policy evicts keys
//	                      (see below).
//
// Every other parameter goes to go-redis (dial_timeout, read_timeout,
// write_timeout, pool_size, client_name, protocol, skip_verify, …); an
// unknown one is rejected by name, so a typo never silently changes
// behaviour.
//
// With rediss:// the server's certificate is checked against the system's
// certificate authorities and the URL's host name. A certificate from a
// private CA is trusted by pointing the SSL_CERT_FILE environment variable
// at that CA's certificate (Go reads it on Linux and other Unix systems);
// skip_verify=true turns the check off, which suits tests only.
//
// Open connects before it returns and fails with an error saying what to
// fix when the server cannot be reached, wants a password the URL lacks,
// rejects the credentials, is older than Redis 7, is a replica (whose
// writes fail, or vanish at its next resync), is a Redis Cluster node (see
// Multi-process use), or has a maxmemory-policy other than noeviction. An
// evicting Redis deletes keys when memory runs out, which would silently
// lose queued events and dedup and idempotency records; with noeviction a
// full Redis instead makes Publish fail loudly. Add allow_eviction=true
// only if you accept that risk.
//
// # Durability
//
// Publish returns nil once Redis has appended the event, so what an
// acknowledged publish survives depends on the server's persistence:
//
//   - No persistence (appendonly no, no save): a crash of the application
//     process loses nothing, but a restart of Redis loses every queued event.
//   - RDB snapshots only (save …): a Redis crash or restart loses what was
//     written since the last snapshot, typically minutes.
//   - AOF with appendfsync everysec (the usual production setting): a Redis
//     crash loses at most about the last second of writes; a clean restart
//     loses nothing.
//   - AOF with appendfsync always: every write is on disk before Redis
//     replies, so an acknowledged publish (and a retry or dead letter)
//     survives a Redis crash and a power loss. Writes are slower (one fsync per Redis event-loop
//     turn, shared by all commands in it).
//
// Replication is asynchronous: a failover to a replica can lose the most
// recent writes.
//
// A Publish that fails tells what is known of its event. Publishes are
// sent on a connection that never resends a command that may have reached
// Redis. When the connection breaks or times out after the command was
// sent and before Redis answered (or ctx ends meanwhile), the driver
// first tries to find out what Redis stored: a publish script call leaves
// a dedup record for each event (see Dedup below), marked with the call,
// and a direct publish's events can be read back from the newest entries
// of their handlers' streams. When it finds every event stored, Publish
// returns nil (an event found in one of its handlers' streams is appended
// to any matching handler registered meanwhile that lacks it). Otherwise
// (not found, or Redis unreachable) the error matches
// ripple.ErrOutcomeUnknown (transport.ErrOutcomeUnknown): the event may
// have been stored, since Redis may still read a command sent before the
// connection broke. Publishing it again with the same id stores it at
// most once when it went through the publish script with an id of its own
// (ripple.WithID, see Dedup below); an event with a generated id has no
// dedup record, and the error says so. A failure to connect at all sent
// nothing and does not match. A Redis at maxmemory (noeviction) refuses
// writes with OOM: Publish and Subscribe then fail with an error matching
// ripple.ErrStorageFull (transport.ErrStorageFull) that says whether part
// of a batched publish was stored nonetheless (see Delivery semantics).
//
// # Delivery semantics
//
// Each handler name is a subscription with its own stream (PREFIX:s:NAME)
// and a consumer group of the same name; the registry of subscriptions
// and their patterns is the hash PREFIX:subs, and every change to it
// sets PREFIX:subsv to a fresh random version. An event reaches every matching
// handler or none. An event published before a subscription existed is
// not delivered to it; one published while a subscription is being
// created may or may not be.
//
// Publish takes one of two paths. Most events take the direct path: an XADD
// NOMKSTREAM to the stream of each matching subscription (in MULTI/EXEC
// when there are several), followed in the same round trip by a read of
// PREFIX:subsv. Routing uses a copy of the registry cached in the process;
// when the version shows the registry changed, the publisher reloads it and
// appends the event to any subscription it missed before Publish returns.
// When a handler subscribes with a narrower pattern than before, events
// published under the old pattern stay with it, and receivers acknowledge
// away, undelivered, any later event a publisher's out-of-date copy still
// sent it (logged at Info). This path sends no command twice: go-redis's
// retries are off for it, except when no connection could be made at all,
// so a lost reply is reported as an error rather than risking a second
// copy, and no dedup record is needed. Events with a delay, and events
// whose id the publisher chose (ripple.WithID), go through the publish
// script instead, which also writes the delayed set and the dedup record.
//
// Concurrent calls are batched: Publish calls of one driver that overlap
// are grouped into one pipeline (or one publish script call), and
// concurrent retries, releases and dead letters of a handler into one
// settle script call. A lone call runs at once on the caller's goroutine;
// calls that arrive while two batches are in flight wait for the next
// batch. This saves round trips and, with appendfsync always, fsyncs.
// Each call still gets the outcome of its own events. When Redis is full
// (maxmemory), a batch can be stored in part: the calls whose events were
// stored return nil, and a failed call's error says whether nothing of it
// was stored or only part (an event for several handlers is stored for all
// of them or none, and a publish script call stores all its events or
// none).
//
// Completions are acknowledged in the background, as with a broker's
// acknowledgements: Settle queues them and returns, and within about a
// millisecond one XACK per handler sends every completion queued
// meanwhile. A completion lost to a crash of the process only means its
// event is delivered again. Stats and Close wait for the completions the
// process has queued; another process may see them pending for that
// millisecond. A completion is acknowledged even when its lease was lost
// meanwhile, since the handler did succeed.
//
// Receivers of one handler, in one process or many, compete in its
// consumer group: each event goes to one of them. Events published while
// every process of a handler is down wait in its stream. Receive blocks in
// XREADGROUP on a dedicated connection (waking at once for new entries,
// and at least every 250ms for delayed entries and expired leases), and
// before that runs one script that moves due delayed entries into the
// stream, reclaims entries whose lease ran out with XAUTOCLAIM and reads
// new ones. The min-idle time of XAUTOCLAIM is the longest lease among
// the handler's live receivers, which each keep theirs in PREFIX:l:NAME,
// so processes running with different leases (during a deploy that
// changes Lease) never take entries from each other early; a receiver
// that stopped renewing its entry for a second past its lease no longer
// counts, and once its entries are reclaimed its consumer is deleted from
// the group, so processes that come and go do not pile up consumers.
// Delivery is therefore at least
// once: an event whose process crashed or hung is delivered again after
// its lease, with its attempt count increased. Lease renewals use XCLAIM
// JUSTID, which resets the idle time without counting a delivery. A retry,
// release or dead letter from a receiver that lost its lease is ignored.
//
// A busy receiver reads ahead, as a broker's prefetch does: when its
// previous Receive returned all it asked for less than 5 ms earlier, one
// XREADGROUP takes up to twice the ask (at least 16 entries, at most 64)
// and the next Receive calls hand out the surplus without a round trip.
// Entries read ahead are leased to that receiver, so Stats counts them as
// active. They go back to the stream, without using an attempt, when the
// receiver closes or when they have waited a quarter of their lease
// (checked at every Receive, and at every lease renewal of the handlers
// that keep the receiver too busy to call Receive). Events a process had
// read ahead when it crashed come back with an attempt counted although no
// handler ran them, as events in flight do. A
// receiver whose handlers are slow calls Receive less often and reads only
// what it asks for. After a read that woke quickly for a partial batch,
// the next read waits 200µs, so that under load one read carries many
// entries.
//
// A retry (and a Release) acknowledges and deletes the entry and puts a
// copy, carrying its attempt count, into the handler's delayed set
// (PREFIX:d:NAME, a sorted set by due time) in the same script, so a
// backoff never holds up other events. Release does not count an attempt.
// A dead event moves to the handler's dead-letter stream (PREFIX:x:NAME)
// with its error, attempt count, first-attempt and dead times. Delays are
// measured on the Redis server's clock, so processes with skewed clocks
// agree.
//
// Entries in a subscription stream that Ripple did not write (no id and
// type fields) are moved to the dead-letter stream with an explanatory
// error instead of being retried. Entries deleted from a stream while
// pending (by an XTRIM or XDEL from outside Ripple) are reported by
// XAUTOCLAIM; they are dropped with a warning in the log (see Logging),
// never retried in a loop.
//
// If Redis loses a consumer group or the subscription registry (a restart
// without persistence, a FLUSHDB), the next Receive recreates them; the
// group is recreated from the start of the stream, preferring duplicates to
// loss. Until a handler's subscription is registered again, events
// published for it match nothing and are not kept: a running process
// registers it at its next receive, within seconds of the restart, and a
// process that is down when it starts. Run Redis with AOF (see Durability)
// when that window matters. go-redis reconnects by itself after a Redis
// restart; calls made during the outage fail and the core retries them.
//
// # Capabilities
//
// Durable (in the sense above), Delay, Dedup, SharedRateLimit, Ephemeral
// and StartFrom are supported. Priority and Ordered are not: a stream is delivered in append
// order and its consumer group has no per-key lock, so WithPriority and
// Ordered() fail with an error matching ripple.ErrNotSupported. The driver
// implements transport.Inspector, transport.DeadLetterQueue,
// transport.Replayer, transport.Claimer, transport.RateLimiter,
// transport.Pauser and transport.Unsubscriber:
//
//   - Dedup: an event's identity is its source and id together
//     (CloudEvents), so the same id under another source is another event.
//     The publish script remembers the identity of each event whose id the
//     publisher chose (ripple.WithID) in PREFIX:di:IDENTITY (SET PX) for
//     the dedup window (default 24h). The record holds a copy of the event
//     as stored, so a publish that finds it stores nothing and returns the
//     kept event marked Duplicate (its id, type, time, key, attributes and
//     data, whatever the handlers' streams have since trimmed); this costs
//     Redis memory of about one event per chosen id for the window, which
//     Retention.DedupWindow bounds. Records written by versions of Ripple
//     before identity dedup (PREFIX:dd:ID) are not read: an id published
//     in the dedup window before an upgrade and again after it is stored
//     twice, and the old records expire by themselves. An id Ripple
//     generated can only come again through a retry of the same publish,
//     and publishes are never resent, so the direct path keeps no record (a
//     delayed event with a generated id keeps one for
//     transport.GeneratedIDWindow, 10 min, which tells after a lost reply
//     whether it was stored; a call that finds its own record is not
//     reported as a duplicate). A publish that fails once its command may
//     have reached Redis (a lost reply) and cannot find out what was stored
//     returns an error matching ripple.ErrOutcomeUnknown (see Durability).
//     One published with ripple.WithID can be published again with
//     the same id without risking a second copy: its dedup record stops
//     the retry. One with a generated id has no record, so a retry may
//     store it twice, and its handlers see it twice (which Idempotent
//     absorbs); give an event an id of your own from its first publish
//     when it must not.
//   - Idempotent(): claims are keys set atomically by a Lua script
//     (PREFIX:c:HANDLER:ID); a done claim is kept for the dedup window.
//   - Rate limits (RateLimit(n, per)) are shared by every process of a
//     handler, and are a sliding window: at most n handler starts in any
//     interval of length per, counted over every process. Each handler has
//     a sorted set of its reserved start times (PREFIX:rw:NAME), trimmed of
//     those older than per by the Lua script that reserves the next one.
//     Reserved starts are measured on the Redis server's clock; a process
//     starts its handler after the wait Reserve returned, so one network
//     round trip of jitter separates the two clocks.
//   - Stats come from Redis itself: waiting is the group's lag plus the
//     delayed entries already due, active its pending count (entries read
//     ahead included), delayed the rest of the delayed set, dead the length
//     of the dead-letter stream, completed the acknowledged entries still
//     in the stream, failed a per-handler counter kept since the handler
//     subscribed.
//   - Ephemeral subscriptions (SubscriptionSpec.Ephemeral, used by ripple
//     tail) are registered as any other, and listed in the hash
//     PREFIX:eph with their lease and when a receiver last touched them
//     (every receive script and lease renewal). When the last live
//     receiver closes, it deletes the subscription with everything kept
//     for it, as Unsubscribe does. One that no receiver has touched for
//     three leases and two seconds (its process was killed) is deleted by
//     whichever process next runs a reclaim scan (every receiver does,
//     several times a second), a Subscribe or Stats, so a killed tail
//     leaves nothing behind for long as long as some process of the
//     application uses the Redis. A durable handler and an ephemeral
//     subscription cannot share a name.
//   - Starting from history (SubscriptionSpec.From, for a handler that
//     does not exist yet, such as a projection rebuilding its read model):
//     each handler has a stream of its own, so a new handler's stream
//     starts empty, and Subscribe copies into it the history the other
//     handlers hold: every event of its pattern published at or after
//     From (by the event's time), once per (source, id), with a fresh
//     attempt budget. Events in their streams (completed and retained,
//     pending or undelivered) and dead-letter streams are appended oldest
//     first, up to where those streams ended when the new handler was
//     registered (later events reach it as any subscription); events in
//     their delayed sets (a delay not yet due, a retry's backoff) go to
//     its delayed set, due at the same time. So history is bounded by
//     retention (completed entries: 1000 per handler and 24h by default;
//     dead letters: 10000 and 7 days), and holds only events some other
//     handler received: an event that matched no handler is not kept.
//     Events published while Subscribe runs may come before the copies,
//     and one published in that instant may come twice. If copying fails,
//     Subscribe removes the new subscription, so subscribing again starts
//     afresh. Subscribing an existing handler again keeps its position
//     whatever From says. transport.Beginning copies all retained history.
//   - Pause and Resume (per handler) are shared by every process: the hash
//     PREFIX:paused names the paused handlers, and the receive script of
//     every receiver reads it at each poll (at least every 250 ms while a
//     process receives) and then reads nothing, reclaims nothing, and
//     makes no blocking read; entries it had read ahead go back to the
//     stream. So within about 250 ms of Pause returning (a blocking read
//     already under way may still bring entries) no process hands out the
//     handler's events. Events published meanwhile wait in its stream, and
//     due delayed ones move there as usual; deliveries already leased
//     finish and settle; expired leases are reclaimed once it is resumed.
//     Stats reports Paused.
//   - Replay, for events published at or after the given time, moves their
//     dead letters back to the stream and appends a fresh copy of each
//     completed entry still retained; events not finished (undelivered,
//     pending or delayed) are left as they are.
//
// Retention (Config.Retention; defaults as the sqlite transport: completed
// 1000 and 24h, dead 10000 and 7 days, dedup 24h) trims a handler's stream
// with XTRIM MINID, only below its oldest pending or undelivered entry, so
// retention never removes work. A trim runs each time a quarter of the
// count has completed, so a busy stream holds up to 25% more completed
// entries than the count; a receiver also trims to the count exactly every
// 2 s. Age is measured from when the entry was added.
//
// # Multi-process use
//
// Any number of processes may open the same URL: they share each handler's
// work and see the same statistics and dead letters. A process killed in
// the middle of a handler leaves its entries pending in the group; another
// receiver reclaims them once the lease runs out. A handler removed from
// the code keeps its subscription, and events keep accumulating in its
// stream; Bus.Unsubscribe retires it and deletes its keys. Scripts build
// their key names from the prefix, so Redis Cluster is not supported; a
// single server, or a primary with replicas and Sentinel in front of it
// reached through one address, is. The check at Open runs once: a process
// whose primary becomes a replica later gets Redis's READONLY error on
// every write until the address leads to the new primary.
//
// # Upgrading
//
// Processes of this version and of versions before identity dedup (which
// kept dedup records as PREFIX:dd:ID and a token-bucket rate limit in
// PREFIX:rl:NAME) can share a Redis during a rolling upgrade, with three
// differences until the last old process is gone: an id published by one
// generation is not recognised as a duplicate by the other (old records
// expire with the dedup window), each generation keeps its own rate
// limit, so together they may start up to twice the limit, and old
// processes neither honour Pause nor touch ephemeral subscriptions (there
// are none until a new process makes one).
//
// # Logging
//
// The driver logs to transport.Config.Logger (ripple.WithLogger), or to
// slog's default logger when there is none. go-redis's own log lines,
// which it would write to stderr, go there too: a failed dial at Debug,
// since the call that needed the connection reports it anyway, and any
// other line at Warn. go-redis has one logger per process, so the first
// Open installs one that passes each line to the logger of the most
// recently opened driver still open (slog's default when none is). An
// application that wants go-redis's lines elsewhere calls redis.SetLogger
// after its first Open.
//
// # As
//
// Bus.As (and Driver.As) expose the go-redis client: pass a
// *(*redis.Client), a *redis.UniversalClient or a *redis.Cmdable, where
// redis is github.com/redis/go-redis/v9. Use it for your own commands; do
// not write to Ripple's keys.
package redis
