// Package stream computes windowed aggregates over events: how many
// signups per plan per minute, the revenue per country over the last
// hour every ten minutes. It is Ripple's Level-3 stream processing, built
// on the public API only: a stream is a handler registered with bus.On,
// and its results are events published with bus.Publish. It therefore
// runs on every transport.
//
//	s := stream.New(bus, "signups-per-plan", "user.signup.completed",
//		stream.Tumbling(time.Minute),
//		stream.KeyByData(func(s Signup) string { return s.Plan }),
//		stream.AllowedLateness(5*time.Second),
//		stream.Emit("signup.plan.counted"))
//	if err := s.Count(); err != nil { ... }   // before bus.Start
//
// # Windows and event time
//
// Windows are tumbling (Tumbling: back to back) or hopping (Hopping: a
// window of a given size every hop, overlapping), aligned on the Unix
// epoch, and computed per key (KeyBy, KeyByData). An event belongs to a
// window by its event time, Event.Time: when it happened, which a
// publisher sets with ripple.WithEventTime (the publish time otherwise),
// not when it arrives.
//
// Events arrive out of order: publishers race, deliveries are retried.
// The stream's watermark is the latest event time it has seen minus the
// allowed lateness (AllowedLateness). A window closes when the watermark
// reaches its end, and its result is published then, one event of the
// Emit type per key with a Result as data. An event arriving after its
// window closed is late: it is not folded into the closed window (whose
// result is out already), and it is counted in Stats.Dropped (or
// Stats.PartlyLate for a hopping event still in time for some of its
// windows), logged at WARN (at most a line a second) and passed to OnLate.
// It is never silently lost.
//
// Windows close only as later events arrive. A live stream whose input may
// pause calls Advance from a ticker so that its last windows are
// published without waiting for the next event.
//
// # Exactly-once results over at-least-once delivery
//
// Delivery is at least once, so a stream may see an event twice. Each
// open window remembers the identities (source and id) of its events and
// ignores a second delivery (Stats.Duplicates): a window counts each
// event once.
//
// Results are published with ids derived from the stream's name, the
// result type, the window and the key (ResultID), and under the source
// "ripple://stream/NAME", whatever process publishes them. Publishing a
// result again stores nothing: the transport's publish deduplication
// returns the stored event marked Duplicate (Stats.Republished). So a
// re-run over the same events publishes each result once.
//
// # State, crashes and replay
//
// A stream keeps its open windows in memory, and forgets each window once
// its result is stored, so memory holds only the windows still open: for
// each key, about (size + lateness + how far input runs out of order) /
// hop windows, each with the identities of its events.
//
// After a crash those windows are gone. They are rebuilt from history:
// on start, replay the stream's handler from far enough back that every
// window still open at the crash is complete again:
//
//	bus.Replay(ctx, s.Handler(), time.Now().Add(-(size + lateness + margin)))
//
// (or `ripple replay HANDLER --since 10m`), where margin covers how long
// after their event time events are published. Replay goes by publish
// time, windows by event time. Windows already published are computed
// again, partly for the earliest, and their results deduplicated (the
// stored one stands; a partial recomputation differs from it and is
// counted in Stats.Conflicts and logged); the windows that were open are
// completed and published once. A stream deployed over existing history
// computes its first windows from it when its handler is registered with
// stream.HandlerOptions(ripple.FromBeginning()) or ripple.StartFrom(t),
// which apply only to a handler that has not subscribed before.
//
// Results need publish deduplication: a stream on a transport without it
// (kafka:// or amqp:// opened without a side store, the store= URL
// parameter) is refused when it registers (Count, Reduce, Aggregate),
// with an error matching ripple.ErrNotSupported that names store=,
// rather than publishing results a re-run would store twice.
//
// Replay needs a transport that keeps history (sqlite, postgres, redis,
// nats, kafka, and memory within one process), and the dedup window
// (ripple.DedupWindow, 24 h by default) must reach back over the
// replayed span, or old results are stored again. A replay that delivers
// events in another order may drop other late events than the first run
// did; again the result stored first stands, and the difference is
// counted in Stats.Conflicts and logged.
//
// # Limits
//
// A stream's state lives in one process: run a stream's handler in one
// process only. Processes sharing a handler name share its events
// (competing consumers), and each would publish partial windows under the
// same ids, of which the first stored would stand.
//
// An event time far in the future (a publisher's wrong clock) moves the
// watermark with it and makes every event after it late: publishers should
// set event times from a clock they trust.
//
// Aggregates are JSON-encoded into the result, which must encode and fit
// the bus's MaxEventSize: a result that does not encode, or that Publish
// refuses as invalid or too large, is logged at ERROR, counted in
// Stats.Unpublished and let go, rather than holding every later window
// behind it. A publish that fails otherwise (the transport unreachable)
// fails the handler, so the event is retried, and the result is published
// by a later call.
// Changing a stream's computation under the same name would make its new
// results collide with stored old ones: rename the stream instead.
package stream
