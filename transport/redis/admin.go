package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

// Stats reports every registered subscription's counts, read from Redis
// itself (XINFO GROUPS, XLEN, ZCARD), so every process sees the same.
// Completed is the number of acknowledged entries still retained.
func (d *Driver) Stats(ctx context.Context) ([]transport.Stats, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	// Completions this process has handed to the acker are reported as
	// done, not pending.
	if err := d.acks.flush(ctx); err != nil {
		return nil, fmt.Errorf("redis transport: stats: %w", err)
	}
	// Abandoned ephemeral subscriptions go first, so they are not reported.
	if err := reapScript.Run(ctx, d.client, nil, d.prefix, newRegistryVersion()).Err(); err != nil && !isOOM(err) {
		return nil, fmt.Errorf("redis transport: stats: %w", err)
	}
	subs, err := d.client.HGetAll(ctx, d.subsKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("redis transport: stats: %w", err)
	}
	names := make([]string, 0, len(subs))
	for n := range subs {
		names = append(names, n)
	}
	sort.Strings(names)
	paused, err := d.client.HGetAll(ctx, d.pausedKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("redis transport: stats: %w", err)
	}
	out := make([]transport.Stats, 0, len(names))
	for _, name := range names {
		res, err := statsScript.Run(ctx, d.client, nil, d.prefix, name).Int64Slice()
		if err != nil {
			return nil, fmt.Errorf("redis transport: stats of %q: %w", name, err)
		}
		if len(res) != 8 {
			return nil, fmt.Errorf("redis transport: stats of %q: unexpected script reply %v", name, res)
		}
		xlen, pending, waiting, oldest := res[0], res[1], res[2], res[3]
		st := transport.Stats{
			Handler: name, Pattern: subs[name],
			Waiting: waiting + res[7], Active: pending, Delayed: res[4],
			Completed: max(xlen-pending-waiting, 0),
			Failed:    res[6], Dead: res[5],
			Paused: paused[name] != "",
		}
		if oldest > 0 {
			st.OldestWaiting = max(time.Since(time.UnixMilli(oldest)), 0)
		}
		out = append(out, st)
	}
	return out, nil
}

func (d *Driver) known(ctx context.Context, handler string) error {
	if d.isClosed() {
		return ErrClosed
	}
	ok, err := d.client.HExists(ctx, d.subsKey(), handler).Result()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("redis transport: handler %q: %w", handler, transport.ErrNotFound)
	}
	return nil
}

// DeadLetters lists up to limit dead letters of a handler, oldest first.
func (d *Driver) DeadLetters(ctx context.Context, handler string, limit int) ([]transport.DeadLetter, error) {
	if err := d.known(ctx, handler); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	msgs, err := d.client.XRangeN(ctx, d.deadKey(handler), "-", "+", int64(limit)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis transport: dead letters of %q: %w", handler, err)
	}
	out := make([]transport.DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, deadLetter(handler, m))
	}
	return out, nil
}

func deadLetter(handler string, m goredis.XMessage) transport.DeadLetter {
	f := func(k string) string { v, _ := m.Values[k].(string); return v }
	flat := make([]any, 0, 2*len(m.Values))
	for k, v := range m.Values {
		flat = append(flat, k, v)
	}
	msg, _, _, ok := parseEntry(flat)
	if !ok {
		// A foreign entry: its stream id stands in for the event id.
		msg = transport.Message{ID: m.ID, Type: f(fieldType)}
	}
	dl := transport.DeadLetter{Message: msg, Handler: handler, Error: f("x_error")}
	dl.Attempts, _ = strconv.Atoi(f("x_attempts"))
	if ms, err := strconv.ParseInt(f("x_first"), 10, 64); err == nil && ms > 0 {
		dl.FirstAttempt = time.UnixMilli(ms)
	}
	if ms, err := strconv.ParseInt(f("x_dead"), 10, 64); err == nil && ms > 0 {
		dl.DeadAt = time.UnixMilli(ms)
	}
	return dl
}

// deadIDs maps event ids to dead-letter stream ids (all when ids is
// empty).
func (d *Driver) deadIDs(ctx context.Context, handler string, ids []string) ([]string, error) {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var out []string
	from := "-"
	for {
		msgs, err := d.client.XRangeN(ctx, d.deadKey(handler), from, "+", 1000).Result()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			id, _ := m.Values[fieldID].(string)
			if id == "" {
				id = m.ID
			}
			if len(ids) == 0 || want[id] {
				out = append(out, m.ID)
			}
		}
		if len(msgs) < 1000 {
			return out, nil
		}
		from = "(" + msgs[len(msgs)-1].ID
	}
}

// Requeue moves dead letters back to the handler's stream with a fresh
// attempt budget.
func (d *Driver) Requeue(ctx context.Context, handler string, ids []string) (int, error) {
	if err := d.known(ctx, handler); err != nil {
		return 0, err
	}
	xids, err := d.deadIDs(ctx, handler, ids)
	if err != nil {
		return 0, fmt.Errorf("redis transport: requeue dead letters of %q: %w", handler, err)
	}
	n, err := d.requeue(ctx, handler, xids)
	if err != nil {
		return n, fmt.Errorf("redis transport: requeue dead letters of %q: %w", handler, err)
	}
	return n, nil
}

// requeue moves the dead letters with dead-letter stream ids xids back to
// the handler's stream.
func (d *Driver) requeue(ctx context.Context, handler string, xids []string) (int, error) {
	n := 0
	for len(xids) > 0 {
		chunk := xids[:min(len(xids), 500)]
		xids = xids[len(chunk):]
		args := []any{d.prefix, handler}
		for _, id := range chunk {
			args = append(args, id)
		}
		k, err := requeueScript.Run(ctx, d.client, nil, args...).Int()
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Purge deletes dead letters.
func (d *Driver) Purge(ctx context.Context, handler string, ids []string) (int, error) {
	if err := d.known(ctx, handler); err != nil {
		return 0, err
	}
	xids, err := d.deadIDs(ctx, handler, ids)
	if err != nil {
		return 0, fmt.Errorf("redis transport: purge dead letters of %q: %w", handler, err)
	}
	n := int64(0)
	for len(xids) > 0 {
		chunk := xids[:min(len(xids), 1000)]
		xids = xids[len(chunk):]
		k, err := d.client.XDel(ctx, d.deadKey(handler), chunk...).Result()
		n += k
		if err != nil {
			return int(n), fmt.Errorf("redis transport: purge dead letters of %q: %w", handler, err)
		}
	}
	return int(n), nil
}

// Replay delivers again the events of the handler published at or after
// since that it has finished: dead letters go back to the stream (leaving
// the dead-letter queue, as with Requeue), and the retained completed
// entries added since get a fresh copy (one per event id). Events the
// handler has not finished (waiting, leased, or in the delayed set for a
// retry or a delay) are delivered anyway and are left as they are.
func (d *Driver) Replay(ctx context.Context, handler string, since time.Time) (int, error) {
	if err := d.known(ctx, handler); err != nil {
		return 0, err
	}
	wrap := func(err error) error { return fmt.Errorf("redis transport: replay %q: %w", handler, err) }
	// Completions still being acknowledged in the background would look
	// unfinished.
	if err := d.acks.flush(ctx); err != nil {
		return 0, wrap(err)
	}
	pattern, err := d.client.HGet(ctx, d.subsKey(), handler).Result()
	if err != nil {
		return 0, wrap(err)
	}
	stream := d.streamKey(handler)
	// Stop at the last entry that exists now, so the copies appended
	// below are not replayed again.
	last, err := d.client.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil {
		return 0, wrap(err)
	}
	// Events are chosen by the time they were published. An entry enters
	// the stream at or after that, by Redis's clock, so entries added
	// before since, less a minute for clocks that disagree, are skipped
	// unread.
	from := "-"
	if ms := since.Add(-time.Minute).UnixMilli(); ms > 0 {
		from = strconv.FormatInt(ms, 10)
	}
	busy, err := d.unfinished(ctx, handler, stream, from)
	if err != nil {
		return 0, wrap(err)
	}
	// Every event in the dead-letter queue is its own: those published
	// since go back to the stream, and none gets a copy of a completed
	// entry besides.
	seen := map[string]bool{}
	var dead []string
	err = d.scanStream(ctx, d.deadKey(handler), "-", "+", func(es []rawEntry) error {
		for _, e := range es {
			id := cmp.Or(e.field(fieldID), e.id)
			seen[id] = true
			if !publishedAt(e).Before(since) && transport.Match(pattern, e.field(fieldType)) {
				dead = append(dead, e.id)
			}
		}
		return nil
	})
	if err != nil {
		return 0, wrap(err)
	}
	n, err := d.requeue(ctx, handler, dead)
	if err != nil {
		return n, wrap(err)
	}
	if len(last) == 0 {
		return n, nil
	}
	err = d.scanStream(ctx, stream, from, last[0].ID, func(es []rawEntry) error {
		pipe := d.client.Pipeline()
		queued := 0
		for _, e := range es {
			id, typ := e.field(fieldID), e.field(fieldType)
			if id == "" || typ == "" || seen[id] || busy[id] || publishedAt(e).Before(since) || !transport.Match(pattern, typ) {
				continue
			}
			seen[id] = true
			// The copy keeps the fields in their order, id and type first.
			args := make([]any, 0, 3+len(e.fields))
			args = append(args, "xadd", stream, "*")
			for i := 0; i+1 < len(e.fields); i += 2 {
				if k, _ := e.fields[i].(string); k != fieldAttempts && k != fieldFirst {
					args = append(args, e.fields[i], e.fields[i+1])
				}
			}
			pipe.Do(ctx, args...)
			queued++
		}
		if queued == 0 {
			return nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		n += queued
		return nil
	})
	if err != nil {
		return n, wrap(err)
	}
	return n, nil
}

// publishedAt returns when the event of entry e was published: its time
// field, or for an entry without one (not written by Ripple) the time its
// id records.
func publishedAt(e rawEntry) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, e.field(fieldTime)); err == nil {
		return t
	}
	sid, _ := parseStreamID(e.id)
	return time.UnixMilli(int64(sid.ms))
}

// scanStream calls fn with the entries of stream from from to end, a page
// at a time, their fields in order.
func (d *Driver) scanStream(ctx context.Context, stream, from, end string, fn func([]rawEntry) error) error {
	const page = 500
	for {
		reply, err := d.client.Do(ctx, "XRANGE", stream, from, end, "COUNT", page).Slice()
		if err != nil {
			return err
		}
		es := make([]rawEntry, 0, len(reply))
		for _, r := range reply {
			if pair, ok := r.([]any); ok && len(pair) == 2 {
				id, _ := pair[0].(string)
				fields, _ := pair[1].([]any)
				es = append(es, rawEntry{id: id, fields: fields})
			}
		}
		if err := fn(es); err != nil {
			return err
		}
		if len(reply) < page || len(es) == 0 {
			return nil
		}
		from = "(" + es[len(es)-1].id
	}
}

// unfinished returns the event ids the handler has not finished: those in
// its delayed set, and those of its stream's entries from from on that are
// undelivered or pending. The delayed set is read before and after the
// stream, so that an event moving between the two (a retry falling due,
// a settlement of a failure) is seen in one of them.
func (d *Driver) unfinished(ctx context.Context, handler, stream, from string) (map[string]bool, error) {
	busy := map[string]bool{}
	if err := d.delayedIDs(ctx, handler, busy); err != nil {
		return nil, err
	}
	groups, err := d.client.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return nil, err
	}
	var delivered streamID
	for _, g := range groups {
		if g.Name == handler {
			delivered, _ = parseStreamID(g.LastDeliveredID)
		}
	}
	err = d.scanStream(ctx, stream, from, "+", func(es []rawEntry) error {
		if len(es) == 0 {
			return nil
		}
		pending, err := d.client.XPendingExt(ctx, &goredis.XPendingExtArgs{
			Stream: stream, Group: handler, Start: es[0].id, End: es[len(es)-1].id, Count: int64(len(es)),
		}).Result()
		if err != nil {
			return err
		}
		leased := make(map[string]bool, len(pending))
		for _, p := range pending {
			leased[p.ID] = true
		}
		for _, e := range es {
			sid, _ := parseStreamID(e.id)
			if id := e.field(fieldID); id != "" && (leased[e.id] || sid.after(delivered)) {
				busy[id] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return busy, d.delayedIDs(ctx, handler, busy)
}

// delayedIDs adds the event ids of the handler's delayed set to ids.
func (d *Driver) delayedIDs(ctx context.Context, handler string, ids map[string]bool) error {
	const page = 500
	for start := 0; ; start += page {
		got, err := delayedIDsScript.Run(ctx, d.client, nil, d.prefix, handler, start, start+page-1).StringSlice()
		if err != nil {
			return err
		}
		for _, id := range got {
			ids[id] = true
		}
		if len(got) < page {
			return nil
		}
	}
}

// Claim takes an idempotency claim with SET-if-absent semantics in a Lua
// script, so two processes can never both hold it.
func (d *Driver) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	if d.isClosed() {
		return 0, ErrClosed
	}
	r, err := claimScript.Run(ctx, d.client, nil, d.claimKey(handler, eventID), max(lease.Milliseconds(), 1)).Int()
	if err != nil {
		return 0, fmt.Errorf("redis transport: claim %s for %q: %w", eventID, handler, err)
	}
	switch r {
	case 1:
		return transport.Claimed, nil
	case 2:
		return transport.Done, nil
	case 3:
		return transport.Busy, nil
	}
	return 0, fmt.Errorf("redis transport: claim %s for %q: unexpected reply %d", eventID, handler, r)
}

// Finish marks a claim done, remembered for the dedup window (24h when
// the window is off), or drops it after a failure.
func (d *Driver) Finish(ctx context.Context, handler, eventID string, success bool) error {
	if d.isClosed() {
		return ErrClosed
	}
	keep := d.ret.DedupWindow
	if keep <= 0 {
		keep = transport.DefaultDedupWindow
	}
	flag := "0"
	if success {
		flag = "1"
	}
	if err := finishScript.Run(ctx, d.client, nil, d.claimKey(handler, eventID), flag, keep.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("redis transport: finish claim %s for %q: %w", eventID, handler, err)
	}
	return nil
}

// Reserve takes one start slot of a rate limit shared by every process of
// the handler and returns how long to wait. The limit is a sliding window
// kept in Redis (see reserveScript): at most n starts in any interval of
// length per, whichever processes they are in.
func (d *Driver) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	if d.isClosed() {
		return 0, ErrClosed
	}
	if n <= 0 || per <= 0 {
		return 0, errors.New("redis transport: rate limit needs n > 0 and a positive period")
	}
	us, err := reserveScript.Run(ctx, d.client, nil, d.rateKey(handler), n, per.Microseconds(), randHex(8)).Int64()
	if err != nil {
		return 0, fmt.Errorf("redis transport: rate limit of %q: %w", handler, err)
	}
	return time.Duration(us) * time.Microsecond, nil
}

// Pause stops every process from handing out the handler's events, within
// about maxBlock (250 ms) of Pause returning: each receiver reads the
// handler's flag in PREFIX:paused at every receive script, and makes no
// blocking read while it is set. Events published meanwhile wait in the
// handler's stream, deliveries already leased finish and settle as usual,
// and expired leases are reclaimed only once the handler is resumed.
func (d *Driver) Pause(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, true)
}

// Resume lets a paused handler's events be handed out again.
func (d *Driver) Resume(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, false)
}

func (d *Driver) setPaused(ctx context.Context, handler string, paused bool) error {
	if d.isClosed() {
		return ErrClosed
	}
	op, flag := "resume", "0"
	if paused {
		op, flag = "pause", "1"
	}
	n, err := pauseScript.Run(ctx, d.client, nil, d.prefix, handler, flag).Int()
	if err != nil {
		return fmt.Errorf("redis transport: %s %q: %w", op, handler, err)
	}
	if n == 0 {
		return fmt.Errorf("redis transport: %s %q: %w", op, handler, transport.ErrNotFound)
	}
	// This process's receivers follow at once: their next Receive reads
	// the flag before any blocking read (other processes' at their next
	// poll).
	// (s.mu is taken after d.mu is released: isClosed takes them the
	// other way round.)
	var mine []*subscription
	d.mu.Lock()
	for s := range d.subs {
		if s.name == handler {
			mine = append(mine, s)
		}
	}
	d.mu.Unlock()
	for _, s := range mine {
		s.mu.Lock()
		s.paused = paused
		s.nextPoll = time.Time{}
		s.mu.Unlock()
	}
	return nil
}

var (
	_ transport.Pauser          = (*Driver)(nil)
	_ transport.Inspector       = (*Driver)(nil)
	_ transport.DeadLetterQueue = (*Driver)(nil)
	_ transport.Replayer        = (*Driver)(nil)
	_ transport.Claimer         = (*Driver)(nil)
	_ transport.RateLimiter     = (*Driver)(nil)
	_ transport.Unsubscriber    = (*Driver)(nil)
)

// Unsubscribe implements transport.Unsubscriber: the handler leaves the
// subscription list and its stream (with its consumer group), delayed set,
// dead-letter stream, failure count and rate-limit state are deleted in one
// MULTI, so a publish sees the handler either whole or gone. Idempotency
// claims expire by themselves. A process still receiving for the handler subscribes it
// again on its next Receive.
func (d *Driver) Unsubscribe(ctx context.Context, handler string) error {
	if err := d.known(ctx, handler); err != nil {
		return err
	}
	_, err := d.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.HDel(ctx, d.subsKey(), handler)
		p.HDel(ctx, d.subsFromKey(), handler)
		p.HDel(ctx, d.pausedKey(), handler)
		p.HDel(ctx, d.prefix+":eph", handler)
		p.Set(ctx, d.subsVersionKey(), newRegistryVersion(), 0)
		p.Del(ctx, d.streamKey(handler), d.prefix+":d:"+handler, d.deadKey(handler), d.rateKey(handler), d.prefix+":rl:"+handler, d.failedKey(handler), d.leasesKey(handler))
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis transport: unsubscribe %q: %w", handler, err)
	}
	return nil
}

// startFrom gives a subscription just created the retained history of
// its pattern from spec.From on (SubscriptionSpec.From). Each handler
// has a stream of its own, so a new one starts empty: the history is
// what the other handlers' streams (completed entries still retained,
// and entries pending or undelivered) and dead-letter streams hold,
// up to where they ended when the subscription was registered (hist,
// from subscribeScript: events added later were routed to the new
// subscription by their publishers). Each event (source, id) is copied
// once, oldest first, with a fresh attempt budget.
func (d *Driver) startFrom(ctx context.Context, spec transport.SubscriptionSpec, hist []any) error {
	type copied struct {
		at     time.Time
		sid    streamID
		fields []any
	}
	// Events already routed to the new subscription are not copied again.
	seen := map[string]bool{}
	identity := func(e rawEntry) string {
		return transport.IdentityKey(e.field(attrPrefix+"source"), e.field(fieldID))
	}
	stream := d.streamKey(spec.Name)
	if err := d.scanStream(ctx, stream, "-", "+", func(es []rawEntry) error {
		for _, e := range es {
			seen[identity(e)] = true
		}
		return nil
	}); err != nil {
		return err
	}
	// Stream entries are added when their event is published or later
	// (a retry), by Redis's clock: those added before From, less a minute
	// for clocks that disagree, are skipped unread.
	from := "-"
	if ms := spec.From.Add(-time.Minute).UnixMilli(); ms > 0 {
		from = strconv.FormatInt(ms, 10)
	}
	drop := map[string]bool{fieldAttempts: true, fieldFirst: true, "x_error": true, "x_attempts": true, "x_first": true, "x_dead": true}
	var todo []copied
	collect := func(es []rawEntry) error {
		for _, e := range es {
			typ := e.field(fieldType)
			if e.field(fieldID) == "" || typ == "" || !transport.Match(spec.Pattern, typ) {
				continue
			}
			at := publishedAt(e)
			if at.Before(spec.From) || seen[identity(e)] {
				continue
			}
			seen[identity(e)] = true
			c := copied{at: at, fields: make([]any, 0, len(e.fields)+2)}
			c.sid, _ = parseStreamID(e.id)
			for i := 0; i+1 < len(e.fields); i += 2 {
				if k, _ := e.fields[i].(string); !drop[k] {
					c.fields = append(c.fields, e.fields[i], e.fields[i+1])
				}
			}
			// Re-added by Ripple (see misrouted), no attempt used.
			c.fields = append(c.fields, fieldAttempts, "0")
			todo = append(todo, c)
		}
		return nil
	}
	for _, h := range hist {
		row, _ := h.([]any)
		if len(row) != 3 {
			continue
		}
		name, _ := row[0].(string)
		lastStream, _ := row[1].(string)
		lastDead, _ := row[2].(string)
		if name == spec.Name {
			continue
		}
		if lastStream != "" {
			if err := d.scanStream(ctx, d.streamKey(name), from, lastStream, collect); err != nil {
				return err
			}
		}
		if lastDead != "" {
			if err := d.scanStream(ctx, d.deadKey(name), "-", lastDead, collect); err != nil {
				return err
			}
		}
	}
	// Events waiting in another handler's delayed set (a delay not yet
	// due, or a retry's backoff) go to the new one's delayed set, due at
	// the same time, unless it has them already.
	own, err := d.delayedPage(ctx, spec.Name, -1)
	if err != nil {
		return err
	}
	for _, e := range own {
		seen[identity(e.rawEntry)] = true
	}
	var later []delayedEntry
	for _, h := range hist {
		row, _ := h.([]any)
		name, _ := row[0].(string)
		if len(row) != 3 || name == spec.Name {
			continue
		}
		es, err := d.delayedPage(ctx, name, -1)
		if err != nil {
			return err
		}
		for _, e := range es {
			typ := e.field(fieldType)
			if e.field(fieldID) == "" || typ == "" || !transport.Match(spec.Pattern, typ) || publishedAt(e.rawEntry).Before(spec.From) || seen[identity(e.rawEntry)] {
				continue
			}
			seen[identity(e.rawEntry)] = true
			fields := make([]any, 0, len(e.fields)+2)
			for i := 0; i+1 < len(e.fields); i += 2 {
				if k, _ := e.fields[i].(string); !drop[k] {
					fields = append(fields, e.fields[i], e.fields[i+1])
				}
			}
			later = append(later, delayedEntry{due: e.due, rawEntry: rawEntry{fields: append(fields, fieldAttempts, "0")}})
		}
	}
	for len(later) > 0 {
		chunk := later[:min(len(later), 200)]
		later = later[len(chunk):]
		args := []any{d.prefix, spec.Name}
		for _, e := range chunk {
			args = append(append(args, e.due, len(e.fields)), e.fields...)
		}
		if err := addDelayedScript.Run(ctx, d.client, nil, args...).Err(); err != nil {
			return err
		}
	}
	sort.SliceStable(todo, func(i, j int) bool {
		if !todo[i].at.Equal(todo[j].at) {
			return todo[i].at.Before(todo[j].at)
		}
		return todo[j].sid.after(todo[i].sid)
	})
	for len(todo) > 0 {
		chunk := todo[:min(len(todo), 500)]
		todo = todo[len(chunk):]
		pipe := d.client.Pipeline()
		for _, c := range chunk {
			args := make([]any, 0, 4+len(c.fields))
			args = append(args, "xadd", stream, "nomkstream", "*")
			pipe.Do(ctx, append(args, c.fields...)...)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
			return err
		}
	}
	return nil
}

// A delayedEntry is an entry of a delayed set and when it is due.
type delayedEntry struct {
	rawEntry
	due string // ms, as Redis keeps the score
}

// delayedPage lists the entries of a subscription's delayed set, all of
// them when limit is negative.
func (d *Driver) delayedPage(ctx context.Context, name string, limit int) ([]delayedEntry, error) {
	const page = 500
	var out []delayedEntry
	for start := 0; limit < 0 || start < limit; start += page {
		res, err := delayedPageScript.Run(ctx, d.client, nil, d.prefix, name, start, start+page-1).Slice()
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			pair, _ := r.([]any)
			if len(pair) != 2 {
				continue
			}
			due, _ := pair[0].(string)
			fields, _ := pair[1].([]any)
			out = append(out, delayedEntry{due: due, rawEntry: rawEntry{fields: fields}})
		}
		if len(res) < page {
			break
		}
	}
	return out, nil
}
