package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

const (
	// maxBlock bounds one blocking XREADGROUP. A new entry wakes the read
	// at once; the bound is for what a read cannot see: delayed entries
	// coming due and leases running out.
	maxBlock = 250 * time.Millisecond
	// trimEvery is how often a receiving subscription applies retention by
	// age even when nothing completes.
	trimEvery = 2 * time.Second
	// defaultLease applies when a spec has none.
	defaultLease = 30 * time.Second
	// idleBlockClients is how many blocking connections a subscription
	// keeps for concurrent Receive calls.
	idleBlockClients = 4
	// receiveLinger is how long Receive waits before reading again after a
	// read that found fewer entries than it asked for within receiveLinger
	// of starting to wait: events are arriving fast, so letting them gather
	// makes one XREADGROUP carry several instead of each publish batch
	// waking a read of its own. A read that waited longer (a low rate)
	// leaves the next one undelayed.
	receiveLinger = 200 * time.Microsecond
	// maxRead caps the entries one read takes. While the receiver is busy
	// (its previous Receive returned all it asked for, within busyWithin of
	// this call), a read takes up to twice what Receive was asked for, at
	// least minRead: the surplus stays leased to this receiver and is
	// handed out by the next Receive calls without a round trip, as a
	// broker's prefetch is. A receiver with slow handlers calls Receive
	// less often and reads only what it asks for, so it does not hold
	// events that other receivers could handle.
	maxRead    = 64
	minRead    = 16
	busyWithin = 5 * time.Millisecond
)

type subscription struct {
	d         *Driver
	name      string
	pattern   string
	lease     time.Duration
	ephemeral bool // see SubscriptionSpec.Ephemeral and luaEphemeral
	consumer  string
	stream    string
	reclaim   time.Duration // how often Receive looks for expired leases

	blk chan *blockConn // idle dedicated connections for blocking reads

	mu          sync.Mutex
	closed      bool
	lastReclaim time.Time
	claimFrom   string    // where the next XAUTOCLAIM scan starts
	nextPoll    time.Time // when Receive must run the poll script again
	lastTrim    time.Time
	// promoteRefused is set while Redis refuses to move due delayed
	// entries, so that the warning is logged once per spell.
	promoteRefused bool
	completes      int64                 // completions since the last trim
	lingerUntil    time.Time             // see receiveLinger
	buf            []*transport.Delivery // read ahead, see maxRead
	bufAt          time.Time             // when buf was read
	fullAt         time.Time             // when a Receive last returned all it was asked for
	view           registryView          // the registry's entry for this subscription
	// paused is the handler's pause flag as the last receive script read
	// it (at least every maxBlock while Receive is called); while it is
	// set Receive hands out nothing and reads nothing.
	paused bool

	trimming atomic.Bool
}

// registryView is what a receiver knows of its subscription's registry
// entry, to filter out entries sent by a publisher's out-of-date registry
// (see route.go).
type registryView struct {
	loaded  bool
	version string // PREFIX:subsv when read
	pattern string // the registered pattern; "" when not registered, or not to filter by
	from    streamID
}

// A streamID is a stream entry id, milliseconds and sequence.
type streamID struct{ ms, seq uint64 }

func parseStreamID(s string) (streamID, bool) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, false
	}
	m, err1 := strconv.ParseUint(ms, 10, 64)
	q, err2 := strconv.ParseUint(seq, 10, 64)
	return streamID{m, q}, err1 == nil && err2 == nil
}

func (a streamID) after(b streamID) bool { return a.ms > b.ms || a.ms == b.ms && a.seq > b.seq }

type token struct {
	id       string
	consumer string
	count    int64 // the entry's delivery count when it was handed out
	attempt  int
	first    int64 // first delivery, unix ms
}

// Subscribe registers the subscription (or updates its pattern) and
// creates its stream and consumer group before it returns, so events
// published afterwards are kept for it.
func (d *Driver) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	if spec.Name == "" || spec.Pattern == "" {
		return nil, fmt.Errorf("redis transport: a subscription needs a name and a pattern (got %q, %q)", spec.Name, spec.Pattern)
	}
	if spec.Ordered {
		return nil, fmt.Errorf("redis transport: handler %q: ordered subscriptions are not supported; use Concurrency(1) and a single process for a handler that must see events one at a time", spec.Name)
	}
	lease := spec.Lease
	if lease <= 0 {
		lease = defaultLease
	}
	consumer := consumerName()
	history := "0"
	if !spec.From.IsZero() {
		history = "1"
	}
	res, err := subscribeScript.Run(ctx, d.client, nil, d.prefix, spec.Name, spec.Pattern, newRegistryVersion(),
		flag(spec.Ephemeral), consumer, lease.Milliseconds(), history).Slice()
	if err != nil {
		if isOOM(err) {
			return nil, fmt.Errorf("redis transport: subscribe %q: Redis is full (maxmemory): %w; free memory or raise maxmemory: %w", spec.Name, err, transport.ErrStorageFull)
		}
		return nil, fmt.Errorf("redis transport: subscribe %q: %w", spec.Name, err)
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("redis transport: subscribe %q: unexpected script reply %v", spec.Name, res)
	}
	code, _ := res[0].(int64)
	switch code {
	case -1:
		return nil, fmt.Errorf("redis transport: subscribe %q: a durable handler of that name exists, so it cannot be subscribed as an ephemeral one (which is deleted when its receivers go); give the ephemeral subscription a name of its own", spec.Name)
	case -2:
		return nil, fmt.Errorf("redis transport: subscribe %q: an ephemeral subscription of that name exists (a ripple tail, say), which is deleted when its receivers go; give the durable handler a name of its own", spec.Name)
	case 0:
		if !spec.From.IsZero() && len(res) == 2 {
			hist, _ := res[1].([]any)
			if err := d.startFrom(ctx, spec, hist); err != nil {
				// Subscribed again, an existing subscription would keep its
				// position: without this one, a retry starts afresh.
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				uerr := d.Unsubscribe(uctx, spec.Name)
				cancel()
				if uerr != nil {
					return nil, fmt.Errorf("redis transport: subscribe %q from %s: copying history failed: %w; removing the subscription failed too (%v), so Unsubscribe it before subscribing it again", spec.Name, spec.From.Format(time.RFC3339Nano), err, uerr)
				}
				return nil, fmt.Errorf("redis transport: subscribe %q from %s: copying history failed, so the subscription was removed; subscribe again: %w", spec.Name, spec.From.Format(time.RFC3339Nano), err)
			}
		}
	}
	s := &subscription{
		d: d, name: spec.Name, pattern: spec.Pattern, lease: lease, ephemeral: spec.Ephemeral,
		consumer: consumer,
		stream:   d.streamKey(spec.Name),
		reclaim:  min(max(lease/4, 5*time.Millisecond), maxBlock),
		blk:      make(chan *blockConn, idleBlockClients),
		lastTrim: time.Now(),
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	d.subs[s] = struct{}{}
	return s, nil
}

func (s *subscription) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed || s.d.isClosed()
}

// Receive leases up to limit entries: entries read ahead by an earlier
// call first, then expired leases reclaimed and due delayed entries (one
// script call), then new entries, blocking on a dedicated connection until
// one arrives or ctx ends.
func (s *subscription) Receive(ctx context.Context, limit int) ([]*transport.Delivery, error) {
	limit = max(limit, 1)
	if ds := s.buffered(ctx, limit); len(ds) > 0 {
		return ds, nil
	}
	s.mu.Lock()
	linger := time.Until(s.lingerUntil)
	s.mu.Unlock()
	if linger > 0 {
		t := time.NewTimer(linger)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	for {
		if s.isClosed() {
			return nil, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// The poll script runs only when reclaiming or promotion may be
		// due; in between, a busy subscription reads new entries with
		// XREADGROUP alone, which returns at once when entries wait.
		s.mu.Lock()
		wait := time.Until(s.nextPoll)
		if s.paused {
			wait = 0 // read the flag again before any blocking read
		}
		count := limit
		if time.Since(s.fullAt) < busyWithin {
			count = min(max(2*limit, minRead), maxRead) // read ahead
		}
		s.mu.Unlock()
		if wait <= 0 {
			ds, nextDue, err := s.poll(ctx, count)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, err
			}
			wait = min(maxBlock, s.reclaim)
			if nextDue >= 0 {
				wait = min(wait, nextDue)
			}
			s.mu.Lock()
			s.nextPoll = time.Now().Add(wait)
			paused := s.paused
			s.mu.Unlock()
			if len(ds) > 0 {
				return s.keep(ds, limit), nil
			}
			if paused {
				// No blocking read while paused: it would lease entries.
				// The next poll looks at the flag again.
				t := time.NewTimer(min(maxBlock, s.reclaim))
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return nil, ctx.Err()
				}
				s.mu.Lock()
				s.nextPoll = time.Time{}
				s.mu.Unlock()
				continue
			}
		}
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		began := time.Now()
		ds, err := s.block(ctx, count, max(wait, time.Millisecond))
		if len(ds) > 1 && len(ds) < count && time.Since(began) < receiveLinger {
			s.mu.Lock()
			s.lingerUntil = time.Now().Add(receiveLinger)
			s.mu.Unlock()
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if s.isClosed() {
				return nil, ErrClosed
			}
			return nil, err
		}
		if len(ds) > 0 {
			return s.keep(ds, limit), nil
		}
	}
}

// keep returns the first limit deliveries and buffers the rest.
func (s *subscription) keep(ds []*transport.Delivery, limit int) []*transport.Delivery {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(ds) < limit {
		return ds
	}
	s.fullAt = now
	if len(ds) == limit {
		return ds
	}
	// Another Receive may have read ahead meanwhile: add to its surplus
	// rather than strand it, leased to this consumer until its lease ends.
	if len(s.buf) == 0 {
		s.bufAt = now
	}
	s.buf = append(s.buf, ds[limit:]...)
	return ds[:limit:limit]
}

// buffered hands out up to limit deliveries read ahead. Deliveries kept
// past a quarter of their lease are released instead: the core renews a
// lease only from the moment it has the delivery, so one handed out that
// late could be reclaimed by another receiver while its handler runs.
func (s *subscription) buffered(ctx context.Context, limit int) []*transport.Delivery {
	if stale := s.takeStale(); len(stale) > 0 {
		s.release(ctx, stale)
		return nil
	}
	s.mu.Lock()
	if len(s.buf) == 0 || s.paused {
		s.mu.Unlock()
		return nil
	}
	n := min(limit, len(s.buf))
	ds := s.buf[:n:n]
	s.buf = s.buf[n:]
	if n == limit {
		s.fullAt = time.Now()
	}
	s.mu.Unlock()
	return ds
}

// takeStale takes the read-ahead deliveries out of the buffer when they
// have waited there past a quarter of their lease. Nothing renews their
// leases: left longer, another receiver would reclaim them, counting an
// attempt for events no handler ran.
func (s *subscription) takeStale() []*transport.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) == 0 || time.Since(s.bufAt) <= s.lease/4 {
		return nil
	}
	stale := s.buf
	s.buf = nil
	return stale
}

// release hands read-ahead deliveries back without counting an attempt.
func (s *subscription) release(ctx context.Context, ds []*transport.Delivery) {
	ss := make([]transport.Settlement, len(ds))
	for i, d := range ds {
		ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Release}
	}
	if err := s.settle(ctx, ss); err != nil {
		s.d.log.Warn("redis transport: could not hand back events read ahead; they are delivered again after their lease", "handler", s.name, "events", len(ds), "err", err)
	}
}

// poll runs the receive script. nextDue is how long until the next
// delayed entry is due, or -1.
func (s *subscription) poll(ctx context.Context, limit int) ([]*transport.Delivery, time.Duration, error) {
	now := time.Now()
	s.mu.Lock()
	reclaim := now.Sub(s.lastReclaim) >= s.reclaim
	if reclaim {
		s.lastReclaim = now
	}
	claimFrom := cmp.Or(s.claimFrom, "0-0")
	trim := now.Sub(s.lastTrim) >= trimEvery
	s.mu.Unlock()
	if trim {
		s.trimAsync(0)
	}
	reclaimFlag := flag(reclaim)
	// On the client that never resends: a resent poll whose first reply
	// was lost would lease entries nobody receives until the lease ends.
	// For the same reason the reply is awaited past ctx's deadline (the
	// client's read timeout bounds it); entries it brings after ctx ended
	// are returned all the same.
	var res []any
	err := s.d.retryDial(ctx, func() error {
		var err error
		res, err = receiveScript.Run(context.WithoutCancel(ctx), s.d.noRetry, nil, s.d.prefix, s.name, s.consumer, limit, reclaimFlag, s.lease.Milliseconds(), s.pattern, newRegistryVersion(), claimFrom, flag(s.ephemeral)).Slice()
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("redis transport: receive %q: %w", s.name, err)
	}
	if len(res) != 7 {
		return nil, 0, fmt.Errorf("redis transport: receive %q: unexpected script reply %v", s.name, res)
	}
	refused, _ := res[5].(string)
	paused, _ := res[6].(int64)
	s.mu.Lock()
	report := refused != "" && !s.promoteRefused
	s.promoteRefused = refused != ""
	s.paused = paused == 1
	var ahead []*transport.Delivery
	if s.paused {
		ahead, s.buf = s.buf, nil
	}
	s.mu.Unlock()
	if len(ahead) > 0 {
		// Read ahead before the pause: handed back, not handed out.
		s.release(ctx, ahead)
	}
	if report {
		s.d.log.Warn("redis transport: Redis refused to move due delayed events (retries, WithDelay) to the stream; they wait until it accepts writes again, events already in the stream are still handled",
			"handler", s.name, "err", refused)
	}
	if next, ok := res[4].(string); ok && reclaim {
		s.mu.Lock()
		s.claimFrom = next
		s.mu.Unlock()
	}
	nextDue := time.Duration(-1)
	if n, ok := res[0].(int64); ok && n >= 0 {
		nextDue = time.Duration(n) * time.Millisecond
	}
	if deleted, _ := res[1].([]any); len(deleted) > 0 {
		s.d.log.Warn("redis transport: entries were deleted from a stream while pending (trimmed by something other than Ripple); they are acknowledged away and lost",
			"handler", s.name, "stream", s.stream, "ids", deleted)
	}
	entries, _ := res[2].([]any)
	raw := make([]rawEntry, 0, len(entries))
	for _, e := range entries {
		t, ok := e.([]any)
		if !ok || len(t) != 3 {
			continue
		}
		id, _ := t[0].(string)
		count, _ := t[1].(int64)
		fields, _ := t[2].([]any)
		raw = append(raw, rawEntry{id: id, count: count, fields: fields})
	}
	version, _ := res[3].(string)
	return s.deliveries(ctx, raw, version), nextDue, nil
}

type rawEntry struct {
	id     string
	count  int64
	fields []any // names and values, as Redis sends them
}

// field returns the value of the entry's field name, or "".
func (e rawEntry) field(name string) string {
	for i := 0; i+1 < len(e.fields); i += 2 {
		if k, _ := e.fields[i].(string); k == name {
			v, _ := e.fields[i+1].(string)
			return v
		}
	}
	return ""
}

// deliveries turns entries into deliveries; version is the registry
// version read after them. Entries Ripple did not write go to the
// dead-letter stream at once, so they are never retried in a loop.
// Entries a publisher sent by an out-of-date registry are acknowledged
// away (see misrouted).
func (s *subscription) deliveries(ctx context.Context, raw []rawEntry, version string) []*transport.Delivery {
	if len(raw) == 0 {
		return nil
	}
	view, err := s.registryView(ctx, version)
	if err != nil {
		// Without the registry no entry can be judged: hand them all out
		// rather than hold events back.
		s.d.log.Warn("redis transport: could not read the subscription registry; events are not checked against the registered pattern", "handler", s.name, "err", err)
	}
	nowMs := time.Now().UnixMilli()
	out := make([]*transport.Delivery, 0, len(raw))
	var foreign []transport.Settlement
	var stray []string
	for _, e := range raw {
		m, base, first, ok := parseEntry(e.fields)
		if ok && err == nil && s.misrouted(view, e, m.Type) {
			stray = append(stray, e.id)
			continue
		}
		tk := &token{id: e.id, consumer: s.consumer, count: e.count, attempt: base + int(e.count), first: first}
		if first == 0 {
			if tk.attempt == 1 {
				tk.first = nowMs
			} else if ms, _, found := strings.Cut(e.id, "-"); found {
				// Reclaimed before any settle recorded a first delivery:
				// the entry's own time is the best bound known.
				fmt.Sscan(ms, &tk.first)
			}
		}
		d := &transport.Delivery{Message: m, Attempt: tk.attempt, FirstDelivered: time.UnixMilli(tk.first), Token: tk}
		if !ok {
			d.Message.ID = e.id
			foreign = append(foreign, transport.Settlement{Delivery: d, Outcome: transport.Dead,
				Error: "not a Ripple event: the stream entry has no id and type fields (written by another program?)"})
			continue
		}
		out = append(out, d)
	}
	if len(stray) > 0 {
		s.d.log.Info("redis transport: skipped events a publisher sent by an out-of-date subscription registry; the handler's pattern no longer matches them",
			"handler", s.name, "pattern", view.pattern, "ids", stray)
		s.d.acks.add(s, stray)
	}
	if len(foreign) > 0 {
		s.d.log.Warn("redis transport: moving entries Ripple did not write to the dead-letter stream", "handler", s.name, "stream", s.stream, "count", len(foreign))
		if err := s.Settle(ctx, foreign); err != nil {
			s.d.log.Error("redis transport: could not dead-letter foreign entries; they return after the lease", "handler", s.name, "err", err)
		}
	}
	return out
}

// misrouted reports whether an entry reached the subscription only by a
// publisher's out-of-date copy of the registry: it was appended after the
// registered pattern took effect, that pattern does not match its type,
// and Ripple did not re-add it itself (retries, delayed events and
// requeued dead letters carry field "a" and were routed when they were
// published).
func (s *subscription) misrouted(view registryView, e rawEntry, typ string) bool {
	if view.pattern == "" || transport.Match(view.pattern, typ) {
		return false
	}
	id, ok := parseStreamID(e.id)
	// Ripple's own re-adds carry field "a" (never empty).
	return ok && id.after(view.from) && e.field(fieldAttempts) == ""
}

// registryView returns the subscription's registry entry as of version,
// reading it again when the registry has changed since it was last read.
func (s *subscription) registryView(ctx context.Context, version string) (registryView, error) {
	s.mu.Lock()
	v := s.view
	s.mu.Unlock()
	if v.loaded && v.version == version {
		return v, nil
	}
	// Also when Receive's ctx has just ended: the entries are in hand.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	reg, err := s.d.readRegistry(ctx, s.name)
	if err != nil {
		return registryView{}, err
	}
	v = registryView{loaded: true, version: reg.version}
	for _, sub := range reg.subs {
		if sub[0] == s.name {
			v.pattern = sub[1]
		}
	}
	if f, ok := parseStreamID(reg.from); ok {
		v.from = f
	} else {
		// A registration without a recorded start (from before Ripple
		// recorded one) cannot tell stray entries from routed ones, so
		// nothing is filtered.
		v.pattern = ""
	}
	s.mu.Lock()
	s.view = v
	s.mu.Unlock()
	return v, nil
}

// block waits for new entries with XREADGROUP BLOCK on a dedicated
// connection. Cancelling ctx ends the wait at once with CLIENT UNBLOCK
// rather than at the block timeout; entries a cancelled read brings are
// handed back.
func (s *subscription) block(ctx context.Context, limit int, wait time.Duration) ([]*transport.Delivery, error) {
	bc := s.blockClient()
	unblocked := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(unblocked)
		// CLIENT UNBLOCK, sent on another connection, ends the wait and
		// leaves the blocked connection usable. When it finds no read
		// blocked (the read was answered already, or not yet sent), or
		// the connection's id is unknown, the read is left to end by
		// itself, within its block time (at most maxBlock): closing the
		// connection instead would lose a reply that leased entries,
		// stranding them until their lease ran out.
		if id := bc.id.Load(); id != 0 {
			uctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = s.d.client.ClientUnblock(uctx, id).Err()
		}
	})
	// Do rather than XReadGroup: the reply is read as flat lists, without
	// a map per entry (the client's read timeout covers the block, see
	// blockClient). The registry version, read right after, tells whether
	// the entries must be checked against a newer registry.
	var read *goredis.Cmd
	var version *goredis.StringCmd
	_, _ = bc.c.Pipelined(context.Background(), func(p goredis.Pipeliner) error {
		read = p.Do(context.Background(), "XREADGROUP", "GROUP", s.name, s.consumer,
			"COUNT", limit, "BLOCK", max(wait.Milliseconds(), 1), "STREAMS", s.stream, ">")
		version = p.Get(context.Background(), s.d.subsVersionKey())
		return nil
	})
	res, err := read.Result()
	if !stop() {
		// Cancelled. The connection goes back to the pool only once the
		// unblocking is over, so that a later read is never the one
		// unblocked. Entries read in that instant go back at once.
		<-unblocked
		s.putBlockClient(bc)
		if err == nil {
			if ds := s.deliveries(ctx, readGroupEntries(res), version.Val()); len(ds) > 0 {
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				s.release(rctx, ds)
				cancel()
			}
		}
		return nil, ctx.Err()
	}
	s.putBlockClient(bc)
	switch {
	case errors.Is(err, goredis.Nil):
		return nil, nil
	case err != nil && strings.Contains(err.Error(), "NOGROUP"):
		// Redis lost the group (restart without persistence, FLUSHDB):
		// recreate it and the subscription's registration.
		if err := subscribeScript.Run(ctx, s.d.client, nil, s.d.prefix, s.name, s.pattern, newRegistryVersion(),
			flag(s.ephemeral), s.consumer, s.lease.Milliseconds(), "0").Err(); err != nil {
			return nil, fmt.Errorf("redis transport: recreating consumer group %q: %w", s.name, err)
		}
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("redis transport: receive %q: %w", s.name, err)
	}
	return s.deliveries(ctx, readGroupEntries(res), version.Val()), nil
}

// readGroupEntries lists the entries of an XREADGROUP reply: an array of
// [stream, entries] pairs in RESP2, a map of stream to entries in RESP3.
func readGroupEntries(reply any) []rawEntry {
	var lists []any
	switch r := reply.(type) {
	case []any:
		for _, st := range r {
			if pair, ok := st.([]any); ok && len(pair) == 2 {
				lists = append(lists, pair[1])
			}
		}
	case map[any]any:
		for _, es := range r {
			lists = append(lists, es)
		}
	}
	var out []rawEntry
	for _, l := range lists {
		es, _ := l.([]any)
		for _, e := range es {
			if pair, ok := e.([]any); ok && len(pair) == 2 {
				id, _ := pair[0].(string)
				fields, _ := pair[1].([]any)
				out = append(out, rawEntry{id: id, count: 1, fields: fields})
			}
		}
	}
	return out
}

// A blockConn is a client with one connection for blocking reads, and
// that connection's id on the server, for CLIENT UNBLOCK.
type blockConn struct {
	c  *goredis.Client
	id atomic.Int64 // 0 until known
}

func (s *subscription) blockClient() *blockConn {
	select {
	case bc := <-s.blk:
		return bc
	default:
	}
	bc := &blockConn{}
	o := *s.d.opts
	o.PoolSize = 1
	o.MinIdleConns = 0
	o.MaxIdleConns = 1
	// A retried XREADGROUP could lease entries whose first reply was lost;
	// an error is better: the core retries the Receive.
	o.MaxRetries = -1
	// XREADGROUP goes through Do, which go-redis does not know blocks, so
	// the read timeout must outlast the longest block (maxBlock).
	switch {
	case o.ReadTimeout == 0:
		o.ReadTimeout = 3*time.Second + maxBlock // 3 s is go-redis's default
	case o.ReadTimeout > 0:
		o.ReadTimeout += maxBlock
	}
	next := o.OnConnect
	o.OnConnect = func(ctx context.Context, cn *goredis.Conn) error {
		if next != nil {
			if err := next(ctx, cn); err != nil {
				return err
			}
		}
		// Without the id a cancelled read is ended by closing the
		// connection instead.
		id, _ := cn.ClientID(ctx).Result()
		bc.id.Store(id)
		return nil
	}
	bc.c = goredis.NewClient(&o)
	return bc
}

func (s *subscription) putBlockClient(bc *blockConn) {
	if !s.isClosed() {
		select {
		case s.blk <- bc:
			return
		default:
		}
	}
	_ = bc.c.Close()
}

// Settle records outcomes. Completions are queued for the acker and
// acknowledged in the background (see acker); retries, releases and dead
// letters run the settle script before Settle returns. Concurrent Settle
// calls are grouped into one script call per subscription, sent in one
// round trip with concurrent publishes.
func (s *subscription) Settle(ctx context.Context, ss []transport.Settlement) error {
	if s.d.isClosed() {
		return ErrClosed
	}
	return s.settle(ctx, ss)
}

// settle is Settle without the closed check, for Close's own use.
func (s *subscription) settle(ctx context.Context, ss []transport.Settlement) error {
	var j *job
	var acks []string
	for _, st := range ss {
		if st.Delivery == nil {
			continue
		}
		tk, ok := st.Delivery.Token.(*token)
		if !ok {
			continue
		}
		var op string
		att := tk.attempt
		switch st.Outcome {
		case transport.Complete:
			acks = append(acks, tk.id)
			continue
		case transport.Retry:
			op = "r"
		case transport.Release:
			op, att = "l", tk.attempt-1
		case transport.Dead:
			op = "d"
		default:
			return fmt.Errorf("redis transport: unknown outcome %d", st.Outcome)
		}
		delay := int64(0)
		if st.Delay > 0 {
			delay = max(st.Delay.Milliseconds(), 1)
		}
		if j == nil {
			j = &job{sub: s, args: make([]any, 3, 3+8*len(ss))}
		}
		j.args = append(j.args, op, tk.id, tk.consumer, tk.count, att, tk.first, delay, st.Error)
		j.n++
		j.size += 128 + len(st.Error)
	}
	if len(acks) > 0 {
		s.d.acks.add(s, acks)
	}
	if j == nil {
		return nil
	}
	return s.d.batch.do(ctx, j)
}

// settled handles the reply of a settle script call.
func (s *subscription) settled(cmd *goredis.Cmd) error {
	res, err := cmd.Slice()
	if err != nil {
		return fmt.Errorf("redis transport: settle %q: %w", s.name, err)
	}
	if len(res) > 0 {
		s.d.log.Warn("redis transport: entries were trimmed from the stream while pending (by something other than Ripple); their retry or dead letter is lost",
			"handler", s.name, "stream", s.stream, "ids", res)
	}
	return nil
}

// completed counts acknowledged completions and starts a retention trim
// when enough have passed since the last one.
func (s *subscription) completed(n int64) {
	s.mu.Lock()
	s.completes += n
	due := s.completes > s.slack()
	s.mu.Unlock()
	if due {
		s.trimAsync(s.slack())
	}
}

// slack is how many completions a subscription lets pass between trims:
// a quarter of the retained count. A trim reads the entries in flight to
// count them, which costs Redis about 150 µs with a busy handler's window
// of 50–100 entries; a trim per quarter keeps that near 0.6 µs per event
// at the default count, while the count stays within 25% of the limit.
// The periodic trim (trimEvery) cuts to the count exactly, so a
// subscription that has gone quiet ends at its limit.
func (s *subscription) slack() int64 { return int64(s.d.ret.CompletedCount) / 4 }

// trimAsync applies retention in the background unless a trim is running,
// letting the count exceed its limit by up to slack.
func (s *subscription) trimAsync(slack int64) {
	if !s.trimming.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	s.completes = 0
	s.lastTrim = time.Now()
	s.mu.Unlock()
	go func() {
		defer s.trimming.Store(false)
		if err := s.d.trim(context.Background(), s.name, slack); err != nil && !s.isClosed() {
			s.d.log.Warn("redis transport: retention trim failed; it is retried later", "handler", s.name, "err", err)
		}
	}()
}

func (d *Driver) trim(ctx context.Context, name string, slack int64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r := d.ret
	return trimScript.Run(ctx, d.client, nil, d.prefix, name,
		r.CompletedCount, r.CompletedAge.Milliseconds(), r.DeadCount, r.DeadAge.Milliseconds(), slack).Err()
}

// Extend renews leases by resetting the entries' idle time.
func (s *subscription) Extend(ctx context.Context, ds []*transport.Delivery, _ time.Duration) error {
	if s.d.isClosed() {
		return ErrClosed
	}
	args := make([]any, 0, 5+3*len(ds))
	args = append(args, s.d.prefix, s.name, s.consumer, s.lease.Milliseconds(), flag(s.ephemeral))
	for _, d := range ds {
		if tk, ok := d.Token.(*token); ok {
			args = append(args, tk.id, tk.consumer, tk.count)
		}
	}
	if len(args) == 5 {
		return nil
	}
	if err := extendScript.Run(ctx, s.d.client, nil, args...).Err(); err != nil {
		return fmt.Errorf("redis transport: extend leases of %q: %w", s.name, err)
	}
	// The core renews its deliveries while their handlers run, which is
	// when no Receive comes to hand back entries read ahead and left
	// waiting (see buffered): this hands them back instead.
	if stale := s.takeStale(); len(stale) > 0 {
		s.release(ctx, stale)
	}
	return nil
}

// Close stops receiving. The subscription stays registered in Redis,
// unless it is ephemeral and this was its last live receiver: then it is
// deleted with everything kept for it.
func (s *subscription) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ahead := s.buf
	s.buf = nil
	s.mu.Unlock()
	for {
		select {
		case bc := <-s.blk:
			_ = bc.c.Close()
			continue
		default:
		}
		break
	}
	s.d.mu.Lock()
	delete(s.d.subs, s)
	s.d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if len(ahead) > 0 {
		s.release(ctx, ahead)
	}
	// The consumer can leave the group only once its completions are
	// acknowledged.
	if err := s.d.acks.flush(ctx); err != nil {
		return fmt.Errorf("redis transport: close %q: completions could not be acknowledged, so those events will be delivered again: %w", s.name, err)
	}
	if err := leaveScript.Run(ctx, s.d.client, nil, s.d.prefix, s.name, s.consumer, flag(s.ephemeral), newRegistryVersion()).Err(); err != nil {
		return fmt.Errorf("redis transport: close %q: leaving the consumer group: %w", s.name, err)
	}
	return nil
}

// flag is a script argument for a boolean.
func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
