package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple/transport"
)

// adminMu serialises one handler's dead-letter administration in this
// process.
func (d *Driver) adminMu(handler string) *sync.Mutex {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.adminMus[handler]
	if m == nil {
		m = &sync.Mutex{}
		d.adminMus[handler] = m
	}
	return m
}

// pattern returns a handler's pattern from the registry, or an error
// wrapping transport.ErrNotFound.
func (d *Driver) pattern(ctx context.Context, handler string) (string, error) {
	if d.isClosed() {
		return "", ErrClosed
	}
	d.mu.Lock()
	g := d.groups[handler]
	d.mu.Unlock()
	if g != nil && !g.ephemeral {
		return g.pattern, nil
	}
	subs, err := d.subscriptions(ctx)
	if err != nil {
		return "", err
	}
	e, ok := subs[handler]
	if !ok {
		return "", fmt.Errorf("kafka: handler %q: %w", handler, transport.ErrNotFound)
	}
	if e.ephemeral {
		return "", fmt.Errorf("kafka: handler %q is an ephemeral subscription, which keeps no dead letters, history or pause state: %w", handler, transport.ErrNotFound)
	}
	return e.pattern, nil
}

// deadLetter is a dead letter with the offset of its record.
type deadLetter struct {
	transport.DeadLetter
	off int64
}

// deadLetters reads a handler's dead-letter topic: dead letters not
// removed by a later marker, oldest first.
func (d *Driver) deadLetters(ctx context.Context, handler string) ([]deadLetter, error) {
	var out []deadLetter
	removed := map[int64]bool{}
	err := d.scan(ctx, d.deadTopic(handler), nil, func(r *kgo.Record) {
		dec := decode(r)
		if dec.removed >= 0 {
			removed[dec.removed] = true
			return
		}
		out = append(out, deadLetter{DeadLetter: transport.DeadLetter{
			Message: dec.msg, Handler: handler, Attempts: dec.attempts, Error: dec.err,
			FirstAttempt: dec.first, DeadAt: dec.deadAt,
		}, off: r.Offset})
	})
	if err != nil {
		return nil, err
	}
	out = slices.DeleteFunc(out, func(l deadLetter) bool { return removed[l.off] })
	// Retention: letters older than DeadAge or beyond the newest
	// DeadCount are dropped (marked removed, and deleted with their
	// segment by the topic's retention.ms).
	ret := d.cfg.Retention
	var drop []deadLetter
	if ret.DeadAge > 0 {
		cut := time.Now().Add(-ret.DeadAge)
		for _, l := range out {
			if l.DeadAt.Before(cut) {
				drop = append(drop, l)
			}
		}
		out = slices.DeleteFunc(out, func(l deadLetter) bool { return l.DeadAt.Before(cut) })
	}
	if len(out) > ret.DeadCount {
		n := len(out) - ret.DeadCount
		drop = append(drop, out[:n]...)
		out = out[n:]
	}
	if len(drop) > 0 {
		if err := d.produce(ctx, d.removeMarkers(handler, drop)); err != nil {
			d.log.Warn("kafka: dropping dead letters past retention failed", "handler", handler, "err", err)
		}
	}
	return out, nil
}

// DeadLetters lists up to limit dead letters of a handler, oldest first.
func (d *Driver) DeadLetters(ctx context.Context, handler string, limit int) ([]transport.DeadLetter, error) {
	if _, err := d.pattern(ctx, handler); err != nil {
		return nil, err
	}
	ls, err := d.deadLetters(ctx, handler)
	if err != nil {
		return nil, err
	}
	if limit > 0 && len(ls) > limit {
		ls = ls[:limit]
	}
	out := make([]transport.DeadLetter, len(ls))
	for i, l := range ls {
		out[i] = l.DeadLetter
	}
	return out, nil
}

// pick selects the dead letters with the given ids (all when ids is
// empty).
func pick(ls []deadLetter, ids []string) []deadLetter {
	if len(ids) == 0 {
		return ls
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var out []deadLetter
	for _, l := range ls {
		if want[l.ID] {
			out = append(out, l)
		}
	}
	return out
}

// removeMarkers are the records that take dead letters out of the queue.
func (d *Driver) removeMarkers(handler string, ls []deadLetter) []*kgo.Record {
	recs := make([]*kgo.Record, len(ls))
	for i, l := range ls {
		recs[i] = &kgo.Record{Topic: d.deadTopic(handler), Headers: []kgo.RecordHeader{{Key: hRemoved, Value: []byte(strconv.FormatInt(l.off, 10))}}}
	}
	return recs
}

// Requeue copies dead letters to the handler's retry topic with a fresh
// attempt budget, then marks them removed.
func (d *Driver) Requeue(ctx context.Context, handler string, ids []string) (int, error) {
	if _, err := d.pattern(ctx, handler); err != nil {
		return 0, err
	}
	mu := d.adminMu(handler)
	mu.Lock()
	defer mu.Unlock()
	ls, err := d.deadLetters(ctx, handler)
	if err != nil {
		return 0, err
	}
	ls = pick(ls, ids)
	if len(ls) == 0 {
		return 0, nil
	}
	now := time.Now()
	recs := make([]*kgo.Record, len(ls))
	for i := range ls {
		recs[i] = copyRecord(&ls[i].Message, d.retryTopic(handler), now)
	}
	if err := d.produce(ctx, recs); err != nil {
		return 0, err
	}
	if err := d.produce(ctx, d.removeMarkers(handler, ls)); err != nil {
		return len(ls), fmt.Errorf("kafka: requeued %d dead letters of %s but could not remove them from its dead-letter topic (they are listed still): %w", len(ls), handler, err)
	}
	return len(ls), nil
}

// Purge marks dead letters removed.
func (d *Driver) Purge(ctx context.Context, handler string, ids []string) (int, error) {
	if _, err := d.pattern(ctx, handler); err != nil {
		return 0, err
	}
	mu := d.adminMu(handler)
	mu.Lock()
	defer mu.Unlock()
	ls, err := d.deadLetters(ctx, handler)
	if err != nil {
		return 0, err
	}
	ls = pick(ls, ids)
	if err := d.produce(ctx, d.removeMarkers(handler, ls)); err != nil {
		return 0, err
	}
	return len(ls), nil
}

// committed returns a group's committed offsets per topic and partition.
func (d *Driver) committed(ctx context.Context, handler string) (map[string]map[int32]int64, error) {
	resp, err := d.adm.FetchOffsets(ctx, d.groupName(handler))
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return nil, fmt.Errorf("kafka: reading the offsets of consumer group %s: %w", d.groupName(handler), err)
	}
	out := map[string]map[int32]int64{}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.Err != nil {
			return
		}
		if out[o.Topic] == nil {
			out[o.Topic] = map[int32]int64{}
		}
		out[o.Topic][o.Partition] = o.At
	})
	return out, nil
}

// Replay copies to the handler's retry topic every event of its pattern
// published at or after since that it has finished: its record in the
// event topic lies before the group's committed offset and no copy of it
// waits in the retry topic. Dead letters among them leave the dead-letter
// queue.
func (d *Driver) Replay(ctx context.Context, handler string, since time.Time) (int, error) {
	pattern, err := d.pattern(ctx, handler)
	if err != nil {
		return 0, err
	}
	mu := d.adminMu(handler)
	mu.Lock()
	defer mu.Unlock()
	d.mu.Lock()
	g := d.groups[handler]
	d.mu.Unlock()
	if g != nil {
		g.commit(ctx, false)
	}
	comm, err := d.committed(ctx, handler)
	if err != nil {
		return 0, err
	}
	// Unfinished: retry-topic records at or after its committed offsets,
	// and events held in this process's memory.
	unfinished := map[string]bool{}
	if err := d.scan(ctx, d.retryTopic(handler), comm[d.retryTopic(handler)], func(r *kgo.Record) {
		m := decode(r).msg
		unfinished[transport.IdentityKey(m.Source(), m.ID)] = true
	}); err != nil {
		return 0, err
	}
	if g != nil {
		g.mu.Lock()
		for _, pt := range g.parts {
			for _, e := range pt.entries {
				if !e.done {
					unfinished[transport.IdentityKey(e.msg.Source(), e.msg.ID)] = true
				}
			}
		}
		g.mu.Unlock()
	}
	starts, err := d.adm.ListOffsetsAfterMilli(ctx, since.UnixMilli(), d.topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("kafka: listing the offsets of %s after %s: %w", d.topic, since.Format(time.RFC3339), err)
	}
	from := map[int32]int64{}
	starts.Each(func(o kadm.ListedOffset) { from[o.Partition] = o.Offset })
	evComm := comm[d.topic]
	seen := map[string]bool{}
	var msgs []transport.Message
	if err := d.scan(ctx, d.topic, from, func(r *kgo.Record) {
		if c, ok := evComm[r.Partition]; !ok || r.Offset >= c || r.Timestamp.Before(since) {
			return
		}
		if !transport.Match(pattern, typeOf(r)) {
			return
		}
		m := decode(r).msg
		k := transport.IdentityKey(m.Source(), m.ID)
		if unfinished[k] || seen[k] {
			return
		}
		seen[k] = true
		msgs = append(msgs, m)
	}); err != nil {
		return 0, err
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	now := time.Now()
	recs := make([]*kgo.Record, len(msgs))
	for i := range msgs {
		recs[i] = copyRecord(&msgs[i], d.retryTopic(handler), now)
	}
	if err := d.produce(ctx, recs); err != nil {
		return 0, err
	}
	// Replayed dead letters leave the dead-letter queue.
	dead, err := d.deadLetters(ctx, handler)
	if err != nil {
		return len(msgs), err
	}
	dead = slices.DeleteFunc(dead, func(l deadLetter) bool { return !seen[transport.IdentityKey(l.Source(), l.ID)] })
	if err := d.produce(ctx, d.removeMarkers(handler, dead)); err != nil {
		return len(msgs), err
	}
	return len(msgs), nil
}

// Unsubscribe deletes the handler's consumer group, its retry and
// dead-letter topics and its registry entry. The handler must not run in
// any process (Kafka refuses to delete a group with members).
func (d *Driver) Unsubscribe(ctx context.Context, handler string) error {
	if _, err := d.pattern(ctx, handler); err != nil {
		return err
	}
	d.mu.Lock()
	g := d.groups[handler]
	d.mu.Unlock()
	if g != nil {
		return fmt.Errorf("kafka: handler %s still receives in this process; close its subscriptions first", handler)
	}
	group := d.groupName(handler)
	var err error
	for i := 0; i < 50; i++ {
		var resp kadm.DeleteGroupResponses
		resp, err = d.adm.DeleteGroups(ctx, group)
		if err == nil {
			err = resp.Error()
		}
		if err == nil || errors.Is(err, kerr.GroupIDNotFound) {
			err = nil
			break
		}
		if !errors.Is(err, kerr.NonEmptyGroup) && !errors.Is(err, kerr.CoordinatorLoadInProgress) && !errors.Is(err, kerr.RebalanceInProgress) {
			break
		}
		// A member that just left may still be listed for a moment.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		if errors.Is(err, kerr.NonEmptyGroup) {
			return fmt.Errorf("kafka: handler %s still runs in another process (consumer group %s has members); stop it there first: %w", handler, group, err)
		}
		return fmt.Errorf("kafka: deleting consumer group %s: %w", group, err)
	}
	if err := d.produce(ctx, []*kgo.Record{
		{Topic: d.registryTopic(), Key: []byte(handler), Value: nil},
		{Topic: d.registryTopic(), Key: []byte(pausePrefix + handler), Value: nil},
	}); err != nil {
		return err
	}
	topics := []string{d.retryTopic(handler), d.deadTopic(handler)}
	resp, err := d.adm.DeleteTopics(ctx, topics...)
	if err == nil {
		err = resp.Error()
	}
	d.forget(topics...)
	if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
		return fmt.Errorf("kafka: deleting the topics of handler %s: %w", handler, err)
	}
	return nil
}

// Stats reports every handler of the namespace. Waiting, Active and
// Delayed come from this process's memory for the partitions it owns and
// from the counts the owning process last committed (with the group's
// offsets) for the others, plus the records not read yet (consumer lag);
// Failed counts failed attempts since the subscription was created;
// Completed is bounded by KeepCompleted (see the package doc); Dead
// reads the dead-letter topic.
func (d *Driver) Stats(ctx context.Context) ([]transport.Stats, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	subs, err := d.subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	// A handler running here whose entry another process just removed
	// (it is being written again, see reassert) is listed all the same.
	d.mu.Lock()
	for n, g := range d.groups {
		if _, ok := subs[n]; !ok {
			subs[n] = regEntry{pattern: g.pattern, ephemeral: g.ephemeral}
		}
	}
	d.mu.Unlock()
	now := time.Now()
	names := make([]string, 0, len(subs))
	for n, e := range subs {
		if e.ephemeral && !e.live(now) && d.localEphemeral(n) == nil {
			// Its process stopped renewing it (killed): forget it.
			if err := d.unregister(ctx, n); err != nil {
				d.log.Warn("kafka: removing a stale ephemeral handler's registry entry failed", "handler", n, "err", err)
			}
			continue
		}
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]transport.Stats, 0, len(names))
	for _, h := range names {
		if e := subs[h]; e.ephemeral {
			out = append(out, d.ephemeralStats(h, e.pattern))
			continue
		}
		st, err := d.stats(ctx, h, subs[h].pattern)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

func (d *Driver) stats(ctx context.Context, handler, pattern string) (transport.Stats, error) {
	st := transport.Stats{Handler: handler, Pattern: pattern, Paused: d.isPaused(handler)}
	d.mu.Lock()
	g := d.groups[handler]
	d.mu.Unlock()
	if g != nil {
		g.commit(ctx, false)
	}
	resp, err := d.adm.FetchOffsets(ctx, d.groupName(handler))
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return st, fmt.Errorf("kafka: reading the offsets of consumer group %s: %w", d.groupName(handler), err)
	}
	topics := []string{d.topic, d.retryTopic(handler)}
	ends, err := d.adm.ListEndOffsets(ctx, topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return st, fmt.Errorf("kafka: listing end offsets: %w", err)
	}
	now := time.Now()
	var oldest time.Time
	var completed int64
	// A snapshot of the partitions this process owns.
	type snap struct {
		c                 counts
		next              int64
		completed, failed int64
	}
	local := map[tp]snap{}
	if g != nil {
		g.mu.Lock()
		for k, pt := range g.parts {
			next := pt.next
			if next < 0 {
				next = pt.commOff
			}
			local[k] = snap{countEntries(pt, now), next, pt.completed, pt.failed}
		}
		g.mu.Unlock()
	}
	ends.Each(func(o kadm.ListedOffset) {
		k := tp{o.Topic, o.Partition}
		var c counts
		var next int64 = -1
		committed := int64(-1)
		if r, ok := resp.Lookup(o.Topic, o.Partition); ok && r.Err == nil {
			committed = r.At
		}
		if sn, ok := local[k]; ok {
			c, next = sn.c, sn.next
			completed += sn.completed
			st.Failed += sn.failed
		} else if r, ok := resp.Lookup(o.Topic, o.Partition); ok && r.Err == nil {
			m := parseMeta(r.At, r.Metadata)
			c, next = m.counts, m.next
			if next < 0 {
				next = committed
			}
			completed += m.completed
			st.Failed += m.failed
		}
		if next < 0 {
			next = committed
		}
		if next >= 0 && o.Offset > next {
			c.waiting += o.Offset - next
		}
		st.Waiting += c.waiting
		st.Active += c.active
		st.Delayed += c.delayed
		if !c.oldest.IsZero() && (oldest.IsZero() || c.oldest.Before(oldest)) {
			oldest = c.oldest
		}
	})
	if !oldest.IsZero() && st.Waiting > 0 {
		st.OldestWaiting = max(now.Sub(oldest), 0)
	}
	// Completed history: what the handler has passed in the event topic
	// within KeepCompleted's age, no more than it completed, and no more
	// than KeepCompleted's count.
	ret := d.cfg.Retention
	if ret.CompletedCount > 0 && ret.CompletedAge > 0 && completed > 0 {
		after, err := d.adm.ListOffsetsAfterMilli(ctx, now.Add(-ret.CompletedAge).UnixMilli(), d.topic)
		if err == nil {
			err = after.Error()
		}
		if err != nil {
			return st, fmt.Errorf("kafka: listing the offsets of %s: %w", d.topic, err)
		}
		var passed int64
		after.Each(func(o kadm.ListedOffset) {
			if r, ok := resp.Lookup(o.Topic, o.Partition); ok && r.Err == nil && r.At > o.Offset {
				passed += r.At - o.Offset
			}
		})
		st.Completed = min(completed, passed, int64(ret.CompletedCount))
	}
	dead, err := d.deadLetters(ctx, handler)
	if err != nil {
		return st, err
	}
	st.Dead = int64(len(dead))
	return st, nil
}
