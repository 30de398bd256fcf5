package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/ripplehq/ripple/transport"
)

const (
	// readAhead bounds the events a process holds deliverable in memory
	// per handler; the consumer stops fetching above it.
	readAhead = 1024
	// forwardAfter: a delayed event due further away than this is moved
	// from the event topic to the handler's retry topic, so that it does
	// not hold back the event topic's committed offset.
	forwardAfter = time.Second
	// commitEvery is how often completed work is committed.
	commitEvery = 100 * time.Millisecond
	// maxMeta bounds the commit metadata (Kafka's default
	// offset.metadata.max.bytes is 4096).
	maxMeta = 3800
	// revokeWait bounds how long a rebalance waits for deliveries of the
	// partitions it takes away to settle.
	revokeWait = 20 * time.Second
)

// tp names a topic partition.
type tp struct {
	topic string
	p     int32
}

// part is the in-memory state of one assigned partition.
type part struct {
	tp      tp
	entries []*entry // by offset; trimmed from the front once done
	next    int64    // offset after the last record seen; -1 before any
	// restored from the committed metadata: the attempts started for
	// each unfinished record the previous owner listed, and the offset
	// below which that list is complete (0: no list), so that a record
	// below known and not listed was finished and is not delivered again.
	attempts map[int64]int
	known    int64
	// what was last committed.
	commOff  int64
	commMeta string
	gone     bool
	revoking bool // being taken away: hand out nothing more from it
	// completed and failed count the partition's completions and failed
	// attempts since the subscription was created (kept in the commit
	// metadata).
	completed, failed int64
}

// entry is one record of a partition that the handler must handle.
type entry struct {
	p        *part
	off      int64
	msg      transport.Message
	attempts int // attempts started, across sessions (as far as known)
	first    time.Time
	due      time.Time
	leased   bool
	until    time.Time
	gen      uint64
	done     bool
	fwd      bool      // being forwarded to the retry topic
	ts       time.Time // the record's timestamp
}

// token identifies one lease of an entry.
type token struct {
	e   *entry
	gen uint64
}

// group is one handler's consumer in this process, shared by every
// Subscription the process opened for the handler.
type group struct {
	d       *Driver
	name    string
	pattern string
	ordered bool
	// ephemeral: no consumer group, retry or dead-letter topic; retries
	// wait in memory and dead letters are dropped (see subscribeEphemeral).
	ephemeral bool
	// regOff is the registry offset of the handler's entry as this
	// process wrote it when it subscribed (see reassert).
	regOff int64
	lease  time.Duration
	retry  string
	dead   string
	cl     *kgo.Client

	mu       sync.Mutex
	parts    map[tp]*part
	wake     chan struct{}
	refs     int
	closed   bool
	fatal    error
	gen      uint64
	joined   chan struct{}
	joinOnce sync.Once
	// fetched is closed after the first poll that follows the first
	// assignment returns, so that Subscribe returns with the backlog in
	// memory.
	fetched   chan struct{}
	fetchOnce sync.Once
	assigned  bool

	commitMu sync.Mutex
	// takes counts the takes that leased something (under mu);
	// committed is the count the last fully successful commit covered
	// (under commitMu), so that a Receive whose take a later commit
	// covered already need not commit again.
	takes, committed uint64
	ctx              context.Context
	cancel           context.CancelFunc
	loops            sync.WaitGroup
}

// Subscribe creates the handler's subscription (its consumer group's
// starting offsets, its retry and dead-letter topics) when it does not
// exist, and returns a receiver sharing this process's consumer for it.
func (d *Driver) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	if spec.Lease <= 0 {
		spec.Lease = 30 * time.Second
	}
	if spec.Ephemeral {
		return d.subscribeEphemeral(ctx, spec)
	}
	d.mu.Lock()
	g := d.groups[spec.Name]
	if g != nil && !g.closed {
		if g.ephemeral {
			d.mu.Unlock()
			return nil, ephemeralClash(spec.Name)
		}
		g.refs++
		d.mu.Unlock()
		return &receiver{g: g, lease: spec.Lease}, nil
	}
	d.mu.Unlock()
	if err := d.refuseKindClash(ctx, spec); err != nil {
		return nil, err
	}

	if err := d.ensureTopics(ctx, nil, d.retryTopic(spec.Name)); err != nil {
		return nil, err
	}
	if err := d.ensureTopics(ctx, map[string]*string{"retention.ms": ptr(strconv.FormatInt(max(d.cfg.Retention.DeadAge, time.Minute).Milliseconds(), 10))}, d.deadTopic(spec.Name)); err != nil {
		return nil, err
	}
	regOff, err := d.initGroup(ctx, spec)
	if err != nil {
		return nil, err
	}
	g, err = d.startGroup(spec, regOff)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	if old := d.groups[spec.Name]; old != nil && !old.closed {
		// Another Subscribe won the race; use its consumer.
		old.refs++
		d.mu.Unlock()
		g.shutdown()
		return &receiver{g: old, lease: spec.Lease}, nil
	}
	if d.closed {
		d.mu.Unlock()
		g.shutdown()
		return nil, ErrClosed
	}
	g.refs = 1
	d.groups[spec.Name] = g
	d.mu.Unlock()
	// Join before returning, so that a second process subscribing at
	// the same time shares the partitions from the start (bounded: a
	// group waiting for a crashed member to time out joins later).
	select {
	case <-g.joined:
		// An idle topic gives the first poll nothing to return, so
		// this wait is short.
		select {
		case <-g.fetched:
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
		}
	case <-time.After(d.opts.sessionTimeout + 2*time.Second):
	case <-ctx.Done():
	}
	return &receiver{g: g, lease: spec.Lease}, nil
}

// initGroup gives a new subscription its starting offsets: the end of
// the event topic (or the first record at or after spec.From), and the
// start of its retry topic. An existing subscription keeps its offsets.
// It records the handler in the registry and returns the entry's offset.
func (d *Driver) initGroup(ctx context.Context, spec transport.SubscriptionSpec) (int64, error) {
	group := d.groupName(spec.Name)
	committed, err := d.adm.FetchOffsets(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return -1, fmt.Errorf("kafka: reading the offsets of consumer group %s: %w", group, err)
	}
	if _, ok := committed[d.topic]; ok {
		return d.register(ctx, spec.Name, spec.Pattern, false, spec.Lease)
	}
	var evOffs kadm.ListedOffsets
	switch {
	case spec.From.IsZero():
		evOffs, err = d.adm.ListEndOffsets(ctx, d.topic)
	case !spec.From.After(transport.Beginning):
		evOffs, err = d.adm.ListStartOffsets(ctx, d.topic)
	default:
		evOffs, err = d.adm.ListOffsetsAfterMilli(ctx, spec.From.UnixMilli(), d.topic)
	}
	if err == nil {
		err = evOffs.Error()
	}
	if err != nil {
		return -1, fmt.Errorf("kafka: listing the offsets of %s: %w", d.topic, err)
	}
	rtOffs, err := d.adm.ListStartOffsets(ctx, d.retryTopic(spec.Name))
	if err == nil {
		err = rtOffs.Error()
	}
	if err != nil {
		return -1, fmt.Errorf("kafka: listing the offsets of %s: %w", d.retryTopic(spec.Name), err)
	}
	offs := kadm.Offsets{}
	add := func(lo kadm.ListedOffsets) {
		lo.Each(func(o kadm.ListedOffset) {
			offs.Add(kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: o.Offset, LeaderEpoch: -1})
		})
	}
	add(evOffs)
	add(rtOffs)
	resp, err := d.adm.CommitOffsets(ctx, group, offs)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		// A member of the group exists already: another process created
		// the subscription a moment ago.
		again, ferr := d.adm.FetchOffsets(ctx, group)
		if _, ok := again[d.topic]; ferr != nil || !ok {
			return -1, fmt.Errorf("kafka: setting the starting offsets of consumer group %s: %w", group, err)
		}
	}
	return d.register(ctx, spec.Name, spec.Pattern, false, spec.Lease)
}

// subscribeEphemeral starts a subscription that exists only in this
// process: a consumer without a group reading the event topic from its
// end offsets as of now, so nothing durable is created on the brokers and
// nothing is left to reap when the process dies.
func (d *Driver) subscribeEphemeral(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	d.mu.Lock()
	if g := d.groups[spec.Name]; g != nil && !g.closed {
		if !g.ephemeral {
			d.mu.Unlock()
			return nil, durableClash(spec.Name)
		}
		g.refs++
		d.mu.Unlock()
		return &receiver{g: g, lease: spec.Lease}, nil
	}
	d.mu.Unlock()
	if err := d.refuseKindClash(ctx, spec); err != nil {
		return nil, err
	}
	ends, err := d.adm.ListEndOffsets(ctx, d.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("kafka: listing the offsets of %s: %w", d.topic, err)
	}
	offs := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) { offs[o.Partition] = kgo.NewOffset().At(o.Offset) })
	// Recorded in the registry, so that Stats in every process lists it
	// while it runs (heartbeatLoop renews the entry).
	regOff, err := d.register(ctx, spec.Name, spec.Pattern, true, spec.Lease)
	if err != nil {
		return nil, err
	}
	g := &group{
		d: d, name: spec.Name, pattern: spec.Pattern, ordered: spec.Ordered, lease: spec.Lease, ephemeral: true, regOff: regOff,
		parts: map[tp]*part{}, wake: make(chan struct{}), joined: make(chan struct{}), refs: 1,
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	cl, err := kgo.NewClient(append(append([]kgo.Opt(nil), d.base...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{d.topic: offs}),
		kgo.FetchMaxWait(500*time.Millisecond))...)
	if err != nil {
		d.dropEntry(spec.Name)
		return nil, fmt.Errorf("kafka: %w", err)
	}
	g.cl = cl
	d.mu.Lock()
	if old := d.groups[spec.Name]; (old != nil && !old.closed) || d.closed {
		d.mu.Unlock()
		cl.Close()
		if old == nil {
			d.dropEntry(spec.Name)
		}
		return nil, fmt.Errorf("kafka: handler %s was subscribed concurrently; subscribe again", spec.Name)
	}
	d.groups[spec.Name] = g
	d.mu.Unlock()
	g.loops.Add(2)
	go g.pollLoop()
	go g.heartbeatLoop()
	return &receiver{g: g, lease: spec.Lease}, nil
}

// startGroup starts the handler's consumer.
func (d *Driver) startGroup(spec transport.SubscriptionSpec, regOff int64) (*group, error) {
	g := &group{
		d: d, name: spec.Name, pattern: spec.Pattern, ordered: spec.Ordered, lease: spec.Lease, regOff: regOff,
		retry: d.retryTopic(spec.Name), dead: d.deadTopic(spec.Name),
		parts: map[tp]*part{}, wake: make(chan struct{}), joined: make(chan struct{}), fetched: make(chan struct{}),
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	opts := append(append([]kgo.Opt(nil), d.base...),
		kgo.ConsumerGroup(d.groupName(spec.Name)),
		kgo.ConsumeTopics(d.topic, g.retry),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.SessionTimeout(d.opts.sessionTimeout),
		kgo.HeartbeatInterval(min(d.opts.sessionTimeout/6, time.Second)),
		kgo.RebalanceTimeout(revokeWait+10*time.Second),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.OnPartitionsAssigned(g.onAssigned),
		kgo.OnOffsetsFetched(g.onFetched),
		kgo.OnPartitionsRevoked(g.onRevoked),
		kgo.OnPartitionsLost(g.onLost),
	)
	// Offset commits carry topic names up to version 9 (topic ids
	// after), and this consumer sends its own commits with metadata.
	vers := kversion.Stable()
	vers.SetMaxKeyVersion(kmsg.OffsetCommit.Int16(), 9)
	opts = append(opts, kgo.MaxVersions(vers))
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	g.cl = cl
	g.loops.Add(2)
	go g.pollLoop()
	go g.commitLoop()
	return g, nil
}

// broadcast wakes every waiting Receive. Call with g.mu held.
func (g *group) broadcast() {
	close(g.wake)
	g.wake = make(chan struct{})
}

func (g *group) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	g.mu.Lock()
	for t, ps := range assigned {
		for _, p := range ps {
			k := tp{t, p}
			if g.parts[k] == nil {
				g.parts[k] = &part{tp: k, next: -1, commOff: -1}
			}
		}
	}
	g.assigned = true
	g.mu.Unlock()
	g.joinOnce.Do(func() { close(g.joined) })
}

// onFetched restores the attempt counts kept in the commit metadata.
func (g *group) onFetched(_ context.Context, _ *kgo.Client, resp *kmsg.OffsetFetchResponse) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	each := func(topic string, p int32, off int64, meta *string) {
		pt := g.parts[tp{topic, p}]
		if pt == nil {
			return
		}
		pt.commOff = off
		if meta != nil {
			pt.commMeta = *meta
			m := parseMeta(off, *meta)
			pt.attempts = m.attempts
			pt.known = m.known
			pt.completed, pt.failed = m.completed, m.failed
		}
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			each(t.Topic, p.Partition, p.Offset, p.Metadata)
		}
	}
	for _, gr := range resp.Groups {
		for _, t := range gr.Topics {
			for _, p := range t.Partitions {
				each(t.Topic, p.Partition, p.Offset, p.Metadata)
			}
		}
	}
	return nil
}

// onRevoked waits (bounded) for the deliveries of the partitions taken
// away to settle, commits them and forgets them.
func (g *group) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	// The client's context ends when it closes; the final commit must
	// still go out.
	ctx, cancel := context.WithTimeout(context.Background(), revokeWait+10*time.Second)
	defer cancel()
	deadline := time.Now().Add(revokeWait)
	g.mu.Lock()
	for t, ps := range revoked {
		for _, p := range ps {
			if pt := g.parts[tp{t, p}]; pt != nil {
				pt.revoking = true
			}
		}
	}
	g.mu.Unlock()
	for {
		busy := false
		g.mu.Lock()
		now := time.Now()
		for t, ps := range revoked {
			for _, p := range ps {
				if pt := g.parts[tp{t, p}]; pt != nil {
					for _, e := range pt.entries {
						if e.leased && e.until.After(now) {
							busy = true
						}
					}
				}
			}
		}
		wake := g.wake
		g.mu.Unlock()
		if !busy || time.Now().After(deadline) {
			break
		}
		select {
		case <-wake:
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	g.commit(ctx, true)
	g.drop(revoked)
}

func (g *group) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	g.drop(lost)
}

func (g *group) drop(ps map[string][]int32) {
	g.mu.Lock()
	for t, list := range ps {
		for _, p := range list {
			if pt := g.parts[tp{t, p}]; pt != nil {
				pt.gone = true
				delete(g.parts, tp{t, p})
			}
		}
	}
	g.broadcast()
	g.mu.Unlock()
}

// pollLoop fetches records into the partitions' entries.
func (g *group) pollLoop() {
	defer g.loops.Done()
	backoff := 100 * time.Millisecond
	for g.ctx.Err() == nil {
		// Stop fetching while enough is deliverable in memory.
		g.mu.Lock()
		for g.readyCount() >= readAhead && !g.closed {
			w := g.wake
			g.mu.Unlock()
			select {
			case <-w:
			case <-g.ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			g.mu.Lock()
		}
		g.mu.Unlock()
		g.mu.Lock()
		wasAssigned := g.assigned
		g.mu.Unlock()
		fs := g.cl.PollRecords(g.ctx, 500)
		if fs.IsClientClosed() || g.ctx.Err() != nil {
			return
		}

		var fatal error
		fs.EachError(func(t string, p int32, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			if errors.Is(err, kerr.UnknownTopicOrPartition) || errors.Is(err, kerr.UnknownTopicID) {
				fatal = fmt.Errorf("kafka: topic %s of handler %s no longer exists (deleted?): %w; close the bus and open it again to recreate it", t, g.name, err)
				return
			}
			g.d.log.Warn("kafka: fetch error", "handler", g.name, "topic", t, "partition", p, "err", err)
		})
		g.mu.Lock()
		if fatal != nil {
			g.fatal = fatal
			g.broadcast()
		} else if g.fatal != nil && fs.NumRecords() > 0 {
			g.fatal = nil
		}
		var fwd []*entry
		now := time.Now()
		fs.EachRecord(func(r *kgo.Record) {
			if f := g.add(r, now); f != nil {
				fwd = append(fwd, f)
			}
		})
		g.broadcast()
		g.mu.Unlock()
		if wasAssigned && g.fetched != nil {
			g.fetchOnce.Do(func() { close(g.fetched) })
		}
		if len(fwd) > 0 {
			g.forward(fwd)
		}
		if fatal != nil {
			select {
			case <-g.ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
		} else {
			backoff = 100 * time.Millisecond
		}
	}
}

// readyCount counts entries deliverable now or leased. Call with g.mu held.
func (g *group) readyCount() int {
	n := 0
	now := time.Now()
	for _, pt := range g.parts {
		for _, e := range pt.entries {
			if !e.done && !e.due.After(now) {
				n++
			}
		}
	}
	return n
}

// add turns a fetched record into an entry. It returns the entry when it
// must be forwarded to the retry topic. Call with g.mu held.
func (g *group) add(r *kgo.Record, now time.Time) *entry {
	pt := g.parts[tp{r.Topic, r.Partition}]
	if pt == nil && g.ephemeral {
		pt = &part{tp: tp{r.Topic, r.Partition}, next: -1, commOff: -1}
		g.parts[pt.tp] = pt
	}
	if pt == nil || r.Offset < pt.next {
		return nil
	}
	pt.next = r.Offset + 1
	if r.Offset < pt.known {
		if _, unfinished := pt.attempts[r.Offset]; !unfinished {
			// Finished by the partition's previous owner after its
			// committed offset: a retried event's older copy, or one
			// completed while an earlier one was still running.
			return nil
		}
	}
	if r.Topic == g.d.topic && !transport.Match(g.pattern, typeOf(r)) {
		g.trim(pt)
		return nil
	}
	dec := decode(r)
	e := &entry{p: pt, off: r.Offset, msg: dec.msg, due: dec.due, attempts: dec.attempts, first: dec.first, ts: r.Timestamp}
	if n, ok := pt.attempts[r.Offset]; ok && n > e.attempts {
		e.attempts = n
	}
	pt.entries = append(pt.entries, e)
	if r.Topic == g.d.topic && !g.ordered && !g.ephemeral && e.due.After(now.Add(forwardAfter)) {
		e.fwd = true
		return e
	}
	return nil
}

// forward moves far-delayed events to the retry topic.
func (g *group) forward(es []*entry) {
	recs := make([]*kgo.Record, len(es))
	now := time.Now()
	for i, e := range es {
		recs[i] = copyRecord(&e.msg, g.retry, now, msHeader(hDue, e.due), originHeader(e))
	}
	err := g.d.produce(g.ctx, recs)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, e := range es {
		e.fwd = false
		if err == nil {
			e.done = true
			g.trim(e.p)
		}
	}
	if err != nil && g.ctx.Err() == nil {
		g.d.log.Warn("kafka: moving delayed events to the retry topic failed; they wait in memory", "handler", g.name, "err", err)
	}
	g.broadcast()
}

func originHeader(e *entry) kgo.RecordHeader {
	return kgo.RecordHeader{Key: hOrigin, Value: []byte(e.p.tp.topic + "/" + strconv.Itoa(int(e.p.tp.p)) + "/" + strconv.FormatInt(e.off, 10))}
}

// trim drops done entries from the front of a partition. Call with g.mu
// held.
func (g *group) trim(pt *part) {
	i := 0
	for i < len(pt.entries) && pt.entries[i].done {
		i++
	}
	if i > 0 {
		clear(pt.entries[:i])
		pt.entries = pt.entries[i:]
	}
}

// counts are a partition's state as its owner sees it.
type counts struct {
	waiting, active, delayed int64
	oldest                   time.Time // timestamp of the oldest waiting record
}

// countEntries counts a partition's unfinished entries. Call with g.mu
// held.
func countEntries(pt *part, now time.Time) counts {
	var c counts
	for _, e := range pt.entries {
		switch {
		case e.done:
		case e.leased && e.until.After(now):
			c.active++
		case e.fwd || e.due.After(now):
			c.delayed++
		default:
			c.waiting++
			if c.oldest.IsZero() || e.ts.Before(c.oldest) {
				c.oldest = e.ts
			}
		}
	}
	return c
}

// meta is what the commit metadata of a partition holds: its counters,
// its owner's counts and read position, and its unfinished records from
// the committed offset on, with the attempts started for each: the list
// is complete below known, so that the next owner skips every record
// below known that it does not list (finished after the committed
// offset, such as a retried event's older copy, whose attempt count is
// stale).
type meta struct {
	completed, failed int64
	counts
	next     int64
	known    int64
	attempts map[int64]int
}

// commitPoint is the offset to commit for a partition (the lowest
// unfinished one) and its metadata. Call with g.mu held.
func commitPoint(pt *part, now time.Time) (int64, string, bool) {
	var off int64
	switch {
	case len(pt.entries) > 0:
		off = pt.entries[0].off
	case pt.next >= 0:
		off = pt.next
	default:
		return 0, "", false
	}
	c := countEntries(pt, now)
	var head strings.Builder
	fmt.Fprintf(&head, "c=%d;f=%d;w=%d;a=%d;d=%d;n=%d", pt.completed, pt.failed, c.waiting, c.active, c.delayed, pt.next)
	if !c.oldest.IsZero() {
		fmt.Fprintf(&head, ";o=%d", c.oldest.UnixMilli())
	}
	// The list covers what this process has read (its unfinished
	// entries) and, beyond that, what the previous owner listed and this
	// one has not read yet.
	known := max(pt.next, pt.known)
	budget := maxMeta - head.Len() - 32
	var list strings.Builder
	add := func(o int64, n int) bool {
		s := strconv.FormatInt(o-off, 36) + ":" + strconv.Itoa(n)
		if list.Len()+len(s)+1 > budget {
			known = o
			return false
		}
		if list.Len() > 0 {
			list.WriteByte(',')
		}
		list.WriteString(s)
		return true
	}
	full := true
	for _, e := range pt.entries {
		if !e.done && !add(e.off, e.attempts) {
			full = false
			break
		}
	}
	if full && pt.known > pt.next {
		var rest []int64
		for o := range pt.attempts {
			if o >= pt.next && o < pt.known {
				rest = append(rest, o)
			}
		}
		slices.Sort(rest)
		for _, o := range rest {
			if !add(o, pt.attempts[o]) {
				break
			}
		}
	}
	fmt.Fprintf(&head, ";k=%d|%s", known-off, list.String())
	return off, head.String(), true
}

// parseMeta reads commit metadata written by commitPoint; base is the
// committed offset.
func parseMeta(base int64, s string) meta {
	m := meta{next: -1}
	head, list, ok := strings.Cut(s, "|")
	if !ok {
		return m
	}
	for _, f := range strings.Split(head, ";") {
		k, v, _ := strings.Cut(f, "=")
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "c":
			m.completed = n
		case "f":
			m.failed = n
		case "w":
			m.waiting = n
		case "a":
			m.active = n
		case "d":
			m.delayed = n
		case "n":
			m.next = n
		case "o":
			m.oldest = time.UnixMilli(n)
		case "k":
			m.known = base + n
		}
	}
	if list == "" {
		return m
	}
	m.attempts = map[int64]int{}
	for _, f := range strings.Split(list, ",") {
		a, b, ok := strings.Cut(f, ":")
		if !ok {
			continue
		}
		rel, err1 := strconv.ParseInt(a, 36, 64)
		n, err2 := strconv.Atoi(b)
		if err1 == nil && err2 == nil {
			m.attempts[base+rel] = n
		}
	}
	return m
}

// commit commits the partitions whose commit point moved (all of them
// when force), with the group's current generation, and waits for the
// answer.
func (g *group) commit(ctx context.Context, force bool) {
	g.commitTakes(ctx, force, 0)
}

// commitTakes is commit, skipped when a commit that began after take
// number upTo (0: none) has succeeded already: Receives that lease while
// a commit is under way share the next one instead of one each. It
// reports whether the state as of take upTo is committed, and otherwise
// the partitions whose commit the broker refused (nil when the whole
// commit failed).
func (g *group) commitTakes(ctx context.Context, force bool, upTo uint64) (bool, map[tp]bool) {
	g.commitMu.Lock()
	defer g.commitMu.Unlock()
	if upTo > 0 && g.committed >= upTo {
		return true, nil
	}
	member, gen := g.cl.GroupMetadata()
	if member == "" || gen < 0 {
		return false, nil
	}
	type pending struct {
		pt   *part
		off  int64
		meta string
	}
	var todo []pending
	g.mu.Lock()
	takes := g.takes
	now := time.Now()
	for _, pt := range g.parts {
		off, meta, ok := commitPoint(pt, now)
		if !ok || (!force && off == pt.commOff && meta == pt.commMeta) {
			continue
		}
		todo = append(todo, pending{pt, off, meta})
	}
	g.mu.Unlock()
	if len(todo) == 0 {
		g.committed = takes
		return true, nil
	}
	req := kmsg.NewPtrOffsetCommitRequest()
	req.Group = g.d.groupName(g.name)
	req.Generation = gen
	req.MemberID = member
	byTopic := map[string]int{}
	for _, p := range todo {
		i, ok := byTopic[p.pt.tp.topic]
		if !ok {
			t := kmsg.NewOffsetCommitRequestTopic()
			t.Topic = p.pt.tp.topic
			req.Topics = append(req.Topics, t)
			i = len(req.Topics) - 1
			byTopic[p.pt.tp.topic] = i
		}
		rp := kmsg.NewOffsetCommitRequestTopicPartition()
		rp.Partition = p.pt.tp.p
		rp.Offset = p.off
		rp.LeaderEpoch = -1
		rp.Metadata = ptr(p.meta)
		req.Topics[i].Partitions = append(req.Topics[i].Partitions, rp)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(cctx, g.cl)
	if err != nil {
		if g.ctx.Err() == nil && ctx.Err() == nil {
			g.d.log.Warn("kafka: commit failed", "handler", g.name, "err", err)
		}
		return false, nil
	}
	ok := map[tp]bool{}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				g.d.log.Warn("kafka: commit refused", "handler", g.name, "topic", t.Topic, "partition", p.Partition, "err", err)
				continue
			}
			ok[tp{t.Topic, p.Partition}] = true
		}
	}
	var refused map[tp]bool
	g.mu.Lock()
	for _, p := range todo {
		if ok[p.pt.tp] {
			p.pt.commOff, p.pt.commMeta = p.off, p.meta
		} else {
			if refused == nil {
				refused = map[tp]bool{}
			}
			refused[p.pt.tp] = true
		}
	}
	g.mu.Unlock()
	if refused != nil {
		return false, refused
	}
	g.committed = takes
	return true, nil
}

// commitLoop commits completed work in the background and checks every
// two seconds that the handler's topics still exist (a consumer is not
// always told that a topic it reads was deleted).
func (g *group) commitLoop() {
	defer g.loops.Done()
	t := time.NewTicker(commitEvery)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			g.commit(g.ctx, false)
			if i%int(2*time.Second/commitEvery) == 0 {
				g.checkTopics()
			}
		}
	}
}

// checkTopics sets the group's fatal error when one of its topics is
// gone, and clears it when they are all back.
func (g *group) checkTopics() {
	ctx, cancel := context.WithTimeout(g.ctx, 10*time.Second)
	defer cancel()
	topics := []string{g.d.topic, g.retry}
	td, err := g.d.adm.ListTopics(ctx, topics...)
	if err != nil {
		return
	}
	var missing []string
	for _, t := range topics {
		if d, ok := td[t]; !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			missing = append(missing, t)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(missing) > 0 {
		g.fatal = fmt.Errorf("kafka: topic %s of handler %s no longer exists (deleted?); close the bus and open it again to recreate it", strings.Join(missing, ", "), g.name)
		g.broadcast()
	} else if g.fatal != nil && strings.Contains(g.fatal.Error(), "no longer exists") {
		g.fatal = nil
	}
}

// shutdown stops the consumer: it commits, leaves the group and waits for
// its loops.
func (g *group) shutdown() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	g.broadcast()
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	g.commit(ctx, false)
	cancel()
	g.cancel()
	g.loops.Wait()
	// Close runs onRevoked, which waits for unsettled leases and commits
	// once more before leaving the group.
	g.cl.Close()
	if g.ephemeral {
		// Its heartbeat has stopped: remove its registry entry, unless
		// another receiver of the name took it over in this process.
		g.d.mu.Lock()
		other := g.d.groups[g.name]
		g.d.mu.Unlock()
		if other == nil || other == g {
			g.d.dropEntry(g.name)
		}
	}
}

// receiver is one Subscription of a handler; every receiver of a process
// shares its group.
type receiver struct {
	g      *group
	lease  time.Duration
	mu     sync.Mutex
	closed bool
}

// Receive leases up to max deliverable events, after making their attempt
// counts durable in the consumer group's commit metadata.
func (r *receiver) Receive(ctx context.Context, maxN int) ([]*transport.Delivery, error) {
	g := r.g
	if maxN <= 0 {
		maxN = 1
	}
	for {
		r.mu.Lock()
		closed := r.closed
		r.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		paused := g.d.isPaused(g.name)
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			return nil, ErrClosed
		}
		if g.fatal != nil {
			err := g.fatal
			g.mu.Unlock()
			return nil, err
		}
		now := time.Now()
		var out []*transport.Delivery
		var next time.Time
		if paused {
			next = now.Add(250 * time.Millisecond)
		} else {
			out, next = g.take(now, maxN, r.lease)
		}
		if len(out) > 0 {
			g.takes++
		}
		seq := g.takes
		wake := g.wake
		g.mu.Unlock()
		if len(out) > 0 {
			if g.ephemeral {
				return out, nil // nothing is committed
			}
			// The attempt must be durable before the handler runs, so
			// that a crash counts it: what the commit did not cover is
			// handed back unstarted (a rebalance under way, say).
			ok, refused := g.commitTakes(ctx, false, seq)
			if ok {
				return out, nil
			}
			out = g.untake(out, refused)
			if len(out) > 0 {
				return out, nil
			}
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
			continue
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			t := time.NewTimer(max(time.Until(next), time.Millisecond))
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wake:
		case <-timer:
		}
	}
}

// untake hands back, unstarted, the deliveries of ds whose attempt
// count could not be committed: those of the partitions in refused, or
// all of them when refused is nil. It returns the others.
func (g *group) untake(ds []*transport.Delivery, refused map[tp]bool) []*transport.Delivery {
	g.mu.Lock()
	defer g.mu.Unlock()
	var keep []*transport.Delivery
	for _, d := range ds {
		tk := d.Token.(token)
		e := tk.e
		if refused != nil && !refused[e.p.tp] {
			keep = append(keep, d)
			continue
		}
		if e.leased && e.gen == tk.gen && !e.done {
			e.leased = false
			e.attempts = max(e.attempts-1, 0)
			e.gen++
		}
	}
	g.broadcast()
	return keep
}

// take leases deliverable entries. It returns them and, when there are
// none, the next time one becomes deliverable (zero if unknown). Call with
// g.mu held.
func (g *group) take(now time.Time, maxN int, lease time.Duration) ([]*transport.Delivery, time.Time) {
	var out []*transport.Delivery
	var next time.Time
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	parts := make([]*part, 0, len(g.parts))
	for _, pt := range g.parts {
		parts = append(parts, pt)
	}
	// Rotate the starting partition so that none starves.
	g.gen++
	if len(parts) > 1 {
		slices.SortFunc(parts, func(a, b *part) int {
			if c := strings.Compare(a.tp.topic, b.tp.topic); c != 0 {
				return c
			}
			return int(a.tp.p - b.tp.p)
		})
		k := int(g.gen % uint64(len(parts)))
		parts = append(parts[k:], parts[:k]...)
	}
	for _, pt := range parts {
		if pt.revoking {
			continue
		}
		var keys map[string]bool
		if g.ordered {
			keys = map[string]bool{}
		}
		for _, e := range pt.entries {
			if len(out) >= maxN {
				return out, next
			}
			if e.done {
				continue
			}
			if keys != nil && e.msg.Key != "" {
				if keys[e.msg.Key] {
					continue
				}
				keys[e.msg.Key] = true
			}
			if e.fwd {
				continue
			}
			if e.leased {
				if e.until.After(now) {
					later(e.until)
					continue
				}
				e.leased = false
			}
			if e.due.After(now) {
				later(e.due)
				continue
			}
			e.leased = true
			e.until = now.Add(lease)
			e.attempts++
			e.gen++
			if e.first.IsZero() {
				e.first = now
			}
			out = append(out, &transport.Delivery{
				Message:        cloneMsg(&e.msg),
				Attempt:        e.attempts,
				FirstDelivered: e.first,
				Token:          token{e, e.gen},
			})
		}
	}
	return out, next
}

func cloneMsg(m *transport.Message) transport.Message {
	c := *m
	c.Data = append([]byte(nil), m.Data...)
	if m.Attrs != nil {
		c.Attrs = make(map[string]string, len(m.Attrs))
		for k, v := range m.Attrs {
			c.Attrs[k] = v
		}
	}
	return c
}

// Settle records outcomes: Complete marks the event done (committed in
// the background); Retry copies it to the handler's retry topic due after
// the backoff (kept in memory instead for an Ordered handler, so that it
// holds back its key); Release puts it back in memory; Dead copies it to
// the dead-letter topic.
func (r *receiver) Settle(ctx context.Context, ss []Settlement) error {
	g := r.g
	now := time.Now()
	var recs []*kgo.Record
	var after []*entry
	g.mu.Lock()
	for _, s := range ss {
		tk, ok := s.Delivery.Token.(token)
		if !ok || tk.e == nil {
			continue
		}
		e := tk.e
		if e.done || e.p.gone {
			continue
		}
		current := e.leased && e.gen == tk.gen
		if !current {
			// A lost lease: only a Complete of an event nobody holds now
			// is recorded.
			if s.Outcome == transport.Complete && !e.leased {
				e.done = true
				e.p.completed++
				g.trim(e.p)
			}
			continue
		}
		if s.Outcome == transport.Retry || s.Outcome == transport.Dead {
			e.p.failed++
		}
		switch s.Outcome {
		case transport.Complete:
			e.leased = false
			e.done = true
			e.p.completed++
			g.trim(e.p)
		case transport.Release:
			e.leased = false
			e.attempts = max(e.attempts-1, 0)
			e.due = now.Add(s.Delay)
		case transport.Retry:
			if g.ordered || g.ephemeral {
				e.leased = false
				e.due = now.Add(s.Delay)
				continue
			}
			e.fwd = true
			recs = append(recs, copyRecord(&e.msg, g.retry, now,
				msHeader(hDue, now.Add(s.Delay)),
				kgo.RecordHeader{Key: hAttempts, Value: []byte(strconv.Itoa(e.attempts))},
				msHeader(hFirst, e.first), originHeader(e)))
			after = append(after, e)
		case transport.Dead:
			if g.ephemeral {
				g.d.log.Warn("kafka: ephemeral subscription: dead-lettered event dropped (an ephemeral subscription keeps no dead letters)", "handler", g.name, "event", e.msg.ID, "error", s.Error)
				e.leased = false
				e.done = true
				e.p.failed++
				g.trim(e.p)
				continue
			}
			e.fwd = true
			recs = append(recs, copyRecord(&e.msg, g.dead, now,
				kgo.RecordHeader{Key: hAttempts, Value: []byte(strconv.Itoa(e.attempts))},
				kgo.RecordHeader{Key: hError, Value: []byte(s.Error)},
				msHeader(hFirst, e.first), msHeader(hDeadAt, now), originHeader(e)))
			after = append(after, e)
		}
	}
	g.broadcast()
	g.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	err := g.d.produce(ctx, recs)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, e := range after {
		e.fwd = false
		e.leased = false
		if err == nil {
			e.done = true
			g.trim(e.p)
		} else {
			// Not moved: deliver it again after a pause.
			e.due = now.Add(time.Second)
		}
	}
	g.broadcast()
	if err != nil {
		return fmt.Errorf("kafka: handler %s: moving events to its retry or dead-letter topic: %w", g.name, err)
	}
	return nil
}

// Settlement is transport.Settlement (a local name keeps signatures short).
type Settlement = transport.Settlement

// Extend renews the leases of deliveries still held.
func (r *receiver) Extend(_ context.Context, ds []*transport.Delivery, lease time.Duration) error {
	g := r.g
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, d := range ds {
		tk, ok := d.Token.(token)
		if !ok || tk.e == nil {
			continue
		}
		if e := tk.e; e.leased && e.gen == tk.gen && !e.done {
			e.until = now.Add(lease)
		}
	}
	return nil
}

// Close stops this receiver; the process's consumer for the handler stops
// with its last receiver.
func (r *receiver) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	g := r.g
	d := g.d
	d.mu.Lock()
	g.refs--
	last := g.refs <= 0
	if last && d.groups[g.name] == g {
		delete(d.groups, g.name)
	}
	d.mu.Unlock()
	if last {
		g.shutdown()
	}
	return nil
}

// scan reads a topic from the start (or from the given offsets) to its
// end offsets as of the call, calling fn for each record in offset order
// per partition.
func (d *Driver) scan(ctx context.Context, topic string, from map[int32]int64, fn func(*kgo.Record)) error {
	ends, err := d.adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("kafka: listing the end offsets of %s: %w", topic, err)
	}
	starts, err := d.adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("kafka: listing the start offsets of %s: %w", topic, err)
	}
	fromP := map[int32]int64{}
	to := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		s := int64(0)
		if so, ok := starts.Lookup(topic, o.Partition); ok {
			s = so.Offset
		}
		if f, ok := from[o.Partition]; ok && f > s {
			s = f
		}
		fromP[o.Partition], to[o.Partition] = s, o.Offset
	})
	return d.scanRange(ctx, topic, fromP, to, fn)
}
