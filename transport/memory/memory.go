// Package memory is Ripple's in-process transport, for tests, demos and
// programs that accept losing queued events when the process exits.
//
// # URL
//
//	memory://            a new, private store
//	memory://NAME        the store named NAME, shared by every bus in this
//	                     process that opens the same URL (until all close it)
//
// # Delivery semantics
//
// Events live in the process's memory: nothing survives the process, so
// Capabilities().Durable is false. Within the process it gives every
// semantic of Ripple's contract: fan-out per handler, competing consumers
// between buses sharing a named store, leases with redelivery, delays,
// priority, per-key ordering, publish deduplication on an event's source
// and id (a duplicate is reported with the event kept), idempotency
// claims, dead letters, retention, replay of retained events, new handlers
// starting from retained history (StartFrom), ephemeral subscriptions
// (deleted when the last bus receiving them closes them; a killed process
// takes its store with it, so nothing needs reaping) and pausing a
// handler, for every bus sharing the store. A handler's rate limit is
// shared by every bus of the store that runs it (SharedRateLimit).
//
// # Limits
//
// Retained history (for deduplication, replay and StartFrom) is bounded
// by the dedup window and by MaxHistory events, whichever is reached
// first.
package memory

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ripplehq/ripple/internal/ratewindow"
	"github.com/ripplehq/ripple/transport"
)

func init() { transport.Register("memory", Open) }

// MaxHistory bounds how many published events a store remembers for
// deduplication and replay.
const MaxHistory = 100_000

// ErrClosed is returned by calls on a closed driver.
var ErrClosed = errors.New("memory transport is closed")

var (
	namedMu sync.Mutex
	named   = map[string]*store{}
)

// Open opens a memory driver for a memory:// URL.
func Open(_ context.Context, url string, cfg transport.Config) (transport.Driver, error) {
	name, ok := strings.CutPrefix(url, "memory://")
	if !ok {
		return nil, fmt.Errorf("memory transport: URL %q must start with memory://", url)
	}
	if strings.ContainsAny(name, "/?#") {
		return nil, fmt.Errorf("memory transport: URL %q: the store name must not contain '/', '?' or '#'; use memory://NAME", url)
	}
	if name == "" {
		return &driver{s: newStore(cfg.Retention, "")}, nil
	}
	namedMu.Lock()
	defer namedMu.Unlock()
	s := named[name]
	if s == nil {
		s = newStore(cfg.Retention, name) // holds this driver's reference
		named[name] = s
	} else {
		s.refs++
	}
	return &driver{s: s}, nil
}

// New returns a driver over a new private store.
func New(r transport.Retention) transport.Driver {
	return &driver{s: newStore(r, "")}
}

type store struct {
	name string
	refs int
	ret  transport.Retention

	mu       sync.Mutex
	subs     map[string]*sub
	history  []histEntry // publish order, for dedup expiry and replay; live from histHead
	histHead int
	ids      map[identity]*transport.Message
	claims   map[claimKey]*claim
	limits   map[string]*ratewindow.Window // rate limits by handler
	// routes caches, by event type, the subscriptions whose pattern
	// matches it; emptied whenever a subscription comes or goes.
	routes map[string][]*sub
	seq    uint64
	now    func() time.Time
	// epoch is the origin of the store's ticks.
	epoch time.Time
}

// A tick is a time on a store's clock: nanoseconds since its epoch, on
// the monotonic clock. Entries keep their times as ticks, 8 bytes without
// a pointer where a time.Time takes 24 with one, so that the entries of
// a busy store take less memory and less of the garbage collector's time.
// Every tick of a store is positive: zero means unset.
type tick int64

// tick converts t to the store's clock.
func (s *store) tick(t time.Time) tick { return tick(t.Sub(s.epoch)) }

// time converts k back to a time.
func (s *store) time(k tick) time.Time { return s.epoch.Add(time.Duration(k)) }

// add returns k+d, saturating instead of overflowing for huge d.
func (k tick) add(d time.Duration) tick {
	if r := k + tick(d); (d > 0) == (r > k) || d == 0 {
		return r
	}
	if d > 0 {
		return math.MaxInt64
	}
	return math.MinInt64
}

type histEntry struct {
	msg *transport.Message
	at  tick // when stored
	seq uint64
	key identity // msg's key in ids
}

// identity is an event's identity, its source and id: the key of ids. Its
// strings are the message's own, so keying on it allocates nothing.
type identity struct{ source, id string }

type claimKey struct{ handler, id string }

type claim struct {
	done  bool
	until time.Time
}

func newStore(r transport.Retention, name string) *store {
	return &store{
		name:   name,
		refs:   1,
		ret:    r.Resolve(),
		subs:   map[string]*sub{},
		ids:    map[identity]*transport.Message{},
		claims: map[claimKey]*claim{},
		limits: map[string]*ratewindow.Window{},
		routes: map[string][]*sub{},
		now:    time.Now,
		// A second back, so that every tick is positive.
		epoch: time.Now().Add(-time.Second),
	}
}

type driver struct {
	s      *store
	mu     sync.Mutex
	closed bool
	// recvs are the driver's open receivers, closed with it, so that an
	// ephemeral subscription goes when its last bus closes.
	recvs map[*receiver]struct{}
}

func (d *driver) Name() string { return "memory" }

func (d *driver) Capabilities() transport.Capabilities {
	return transport.Capabilities{Delay: true, Priority: true, Ordered: true, Dedup: true, Ephemeral: true, StartFrom: true, SharedRateLimit: true}
}

func (d *driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	recvs := d.recvs
	d.recvs = nil
	d.mu.Unlock()
	for r := range recvs {
		_ = r.Close()
	}
	if d.s.name != "" {
		namedMu.Lock()
		d.s.refs--
		if d.s.refs == 0 && named[d.s.name] == d.s {
			delete(named, d.s.name)
		}
		namedMu.Unlock()
	}
	return nil
}

func (d *driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if d.isClosed() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// The store keeps its own copies, the caller may reuse its buffers:
	// made before the store is locked, so that other publishers and the
	// receivers do not wait for them.
	var one [1]*transport.Message
	copies := one[:]
	if len(msgs) > 1 {
		copies = make([]*transport.Message, len(msgs))
	}
	for i, m := range msgs {
		copies[i] = copyMessage(m)
	}
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	nowTick := s.tick(s.now())
	s.expireHistory(nowTick)
	for i, m := range msgs {
		key := identity{m.Source(), m.ID}
		if kept, dup := s.ids[key]; dup {
			m.Duplicate = copyMessage(kept)
			continue
		}
		m.Duplicate = nil
		m = copies[i]
		s.seq++
		s.ids[key] = m
		s.history = append(s.history, histEntry{msg: m, at: nowTick, seq: s.seq, key: key})
		subs := s.route(m.Type)
		// One allocation for the event's entries in every subscription.
		es := make([]entry, len(subs))
		for i, sb := range subs {
			es[i] = entry{msg: m, seq: s.seq, runAt: nowTick.add(m.Delay), published: nowTick}
			sb.add(&es[i], nowTick)
			// Only the subscriptions that got the event need waking.
			sb.wake()
		}
	}
	return nil
}

// copyMessage returns a deep copy of m, so that what one party does to
// its message (a publisher reusing a buffer, a handler writing to its
// event's data) is never seen by another handler, a retry or a replay, as
// on transports that serialise messages.
func copyMessage(m *transport.Message) *transport.Message {
	c := *m
	c.Data = bytes.Clone(m.Data)
	c.Attrs = maps.Clone(m.Attrs)
	return &c
}

// route returns the subscriptions whose pattern matches typ. s.mu must be
// held.
func (s *store) route(typ string) []*sub {
	if subs, ok := s.routes[typ]; ok {
		return subs
	}
	var subs []*sub
	for _, sb := range s.subs {
		if transport.Match(sb.pattern, typ) {
			subs = append(subs, sb)
		}
	}
	if len(s.routes) >= maxRoutes {
		clear(s.routes)
	}
	s.routes[typ] = subs
	return subs
}

// maxRoutes bounds the route cache: a store that sees more event types
// than this starts it afresh.
const maxRoutes = 4096

func (s *store) expireHistory(now tick) {
	h := s.histHead
	for h < len(s.history) && (len(s.history)-h > MaxHistory || now-s.history[h].at > tick(s.ret.DedupWindow)) {
		delete(s.ids, s.history[h].key)
		s.history[h] = histEntry{}
		h++
	}
	s.histHead = h
	// Compact once the dead prefix outweighs the live part, so expiry
	// costs amortised O(1) per publish.
	if h > 1024 && h >= len(s.history)/2 {
		// In place: the array stays, as large as the history has been.
		n := copy(s.history, s.history[h:])
		clear(s.history[n:])
		s.history, s.histHead = s.history[:n], 0
	}
}

func (d *driver) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.subs[spec.Name]
	if sb == nil {
		sb = newSub(s, spec)
		s.subs[spec.Name] = sb
		clear(s.routes)
		if !spec.From.IsZero() {
			s.startFrom(sb, spec.From)
		}
	} else if sb.pattern != spec.Pattern || sb.ordered != spec.Ordered {
		return nil, fmt.Errorf("memory transport: handler %q is already subscribed to %q (ordered=%v); another bus in this process registered it differently (%q, ordered=%v)",
			spec.Name, sb.pattern, sb.ordered, spec.Pattern, spec.Ordered)
	} else if sb.ephemeral != spec.Ephemeral {
		return nil, fmt.Errorf("memory transport: handler %q exists as %s subscription; it cannot be received as %s one: give the handler another name",
			spec.Name, article(sb.ephemeral), article(spec.Ephemeral))
	}
	r := &receiver{d: d, sb: sb, lease: spec.Lease}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	if d.recvs == nil {
		d.recvs = map[*receiver]struct{}{}
	}
	d.recvs[r] = struct{}{}
	d.mu.Unlock()
	sb.holders++
	return r, nil
}

func article(ephemeral bool) string {
	if ephemeral {
		return "an ephemeral"
	}
	return "a durable"
}

// startFrom gives a new subscription every retained message of its
// pattern published at or after from. s.mu must be held.
func (s *store) startFrom(sb *sub, from time.Time) {
	now, fromTick := s.tick(s.now()), s.tick(from)
	for _, h := range s.history[s.histHead:] {
		if h.at >= fromTick && transport.Match(sb.pattern, h.msg.Type) {
			sb.add(&entry{msg: h.msg, seq: h.seq, runAt: h.at.add(h.msg.Delay), published: h.at}, now)
		}
	}
}

// ---- subscriptions ----

type state uint8

const (
	stReady state = iota
	stDelayed
	stActive
	stBlocked // ordered: waiting behind an earlier event of its key
	stDone
	stDead
)

// An entry is one event in one subscription: every subscription of the
// event has its own. Its fields are sized so that it fits in 96 bytes.
type entry struct {
	msg       *transport.Message
	seq       uint64
	gen       uint64
	runAt     tick
	leaseEnd  tick
	published tick
	first     tick // zero until first delivered
	finished  tick
	lastErr   string
	attempts  int32
	failures  int32
	index     int32 // position in the heap it is in, or -1
	state     state
}

type sub struct {
	s         *store
	name      string
	pattern   string
	ordered   bool
	ephemeral bool
	// holders counts open receivers; an ephemeral subscription is deleted
	// when it drops to zero.
	holders int
	paused  bool

	ready   readyQueue
	delayed timeHeap // by runAt
	active  timeHeap // by leaseEnd
	keys    map[string][]*entry
	done    []*entry
	dead    []*entry
	// doneBuf and deadBuf are the arrays behind done and dead (see
	// appendKept).
	doneBuf []*entry
	deadBuf []*entry
	// agedAt is when retain last trimmed by age.
	agedAt  tick
	changed chan struct{}
	waiters int
}

func newSub(s *store, spec transport.SubscriptionSpec) *sub {
	return &sub{
		s: s, name: spec.Name, pattern: spec.Pattern, ordered: spec.Ordered, ephemeral: spec.Ephemeral,
		active:  timeHeap{byLease: true},
		keys:    map[string][]*entry{},
		changed: make(chan struct{}),
	}
}

func (sb *sub) wake() {
	if sb.waiters > 0 {
		close(sb.changed)
		sb.changed = make(chan struct{})
		sb.waiters = 0
	}
}

// add places a new entry, honouring per-key order.
func (sb *sub) add(e *entry, now tick) {
	e.index = -1
	if sb.ordered && e.msg.Key != "" {
		q := sb.keys[e.msg.Key]
		sb.keys[e.msg.Key] = append(q, e)
		if len(q) > 0 {
			e.state = stBlocked
			return
		}
	}
	sb.schedule(e, now)
}

// schedule puts an entry in the ready or delayed heap by its runAt.
func (sb *sub) schedule(e *entry, now tick) {
	if e.runAt > now {
		e.state = stDelayed
		heap.Push(&sb.delayed, e)
	} else {
		e.state = stReady
		sb.ready.push(e)
	}
}

// promote moves due delayed entries and expired leases to ready.
func (sb *sub) promote(now tick) {
	for sb.delayed.Len() > 0 && sb.delayed.items[0].runAt <= now {
		e := heap.Pop(&sb.delayed).(*entry)
		e.state = stReady
		sb.ready.push(e)
	}
	for sb.active.Len() > 0 && sb.active.items[0].leaseEnd < now {
		e := heap.Pop(&sb.active).(*entry)
		e.gen++ // the old lease can no longer settle
		e.state = stReady
		sb.ready.push(e)
	}
}

// nextWake is when something becomes deliverable without a publish, or
// zero when nothing will.
func (sb *sub) nextWake() tick {
	var t tick
	if sb.delayed.Len() > 0 {
		t = sb.delayed.items[0].runAt
	}
	if sb.active.Len() > 0 {
		if a := sb.active.items[0].leaseEnd; t == 0 || a < t {
			t = a
		}
	}
	return t
}

// finish removes an entry from its key queue and schedules the next one.
func (sb *sub) finish(e *entry, now tick) {
	if !sb.ordered || e.msg.Key == "" {
		return
	}
	q := sb.keys[e.msg.Key]
	for i, x := range q {
		if x == e {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(sb.keys, e.msg.Key)
		return
	}
	sb.keys[e.msg.Key] = q
	if q[0].state == stBlocked {
		sb.schedule(q[0], now)
	}
}

// retain trims the completed and dead lists to the retention counts, and
// to the retention ages at most every tenth of the shorter age (and at
// least once a second): reading the age of the oldest entry is a cache
// miss every settlement would pay.
func (sb *sub) retain(now tick) {
	r := sb.s.ret
	every := tick(min(time.Second, min(r.CompletedAge, r.DeadAge)/10))
	byAge := now-sb.agedAt >= every || now < sb.agedAt
	if byAge {
		sb.agedAt = now
	}
	sb.done = trim(sb.done, r.CompletedCount, r.CompletedAge, now, byAge)
	sb.dead = trim(sb.dead, r.DeadCount, r.DeadAge, now, byAge)
}

// appendKept appends e to list, a list that trim shortens from the front,
// whose array is *buf. When list reaches the end of its array it moves
// back to the start of *buf, which is replaced by one twice as long as the
// list only when it is shorter than that: a list kept at its retention
// count reuses one array instead of allocating as its start moves on.
func appendKept(list []*entry, buf *[]*entry, e *entry) []*entry {
	if len(list) == cap(list) {
		b := *buf
		if cap(b) < max(2*len(list), 16) {
			b = make([]*entry, max(2*len(list), 16))
		} else {
			b = b[:cap(b)]
		}
		n := copy(b, list)
		clear(b[n:]) // the old places of entries now at the front
		*buf = b
		list = b[:n]
	}
	return append(list, e)
}

func trim(list []*entry, count int, age time.Duration, now tick, byAge bool) []*entry {
	cut := max(len(list)-count, 0)
	for byAge && cut < len(list) && now-list[cut].finished > tick(age) {
		cut++
	}
	if cut == 0 {
		return list
	}
	clear(list[:cut])
	return list[cut:]
}

// ---- receiver ----

type receiver struct {
	d      *driver
	sb     *sub
	lease  time.Duration
	closed bool // under the store's mu
}

type token struct {
	e   *entry
	gen uint64
}

// leased is a delivery and its token in one allocation; the delivery's
// Token points at tok.
type leased struct {
	d   transport.Delivery
	tok token
	msg *transport.Message // what d is built from
}

func (r *receiver) Receive(ctx context.Context, limit int) ([]*transport.Delivery, error) {
	s := r.sb.s
	for {
		if r.d.isClosed() {
			return nil, ErrClosed
		}
		s.mu.Lock()
		now := s.tick(s.now())
		r.sb.promote(now)
		if n := min(r.sb.ready.Len(), limit); n > 0 && !r.sb.paused {
			out := make([]*transport.Delivery, n)
			// One allocation for the batch's deliveries and one for
			// their data.
			ls := make([]leased, n)
			size := 0
			for i := range ls {
				e := r.sb.ready.pop()
				e.state = stActive
				e.attempts++
				e.gen++
				e.leaseEnd = now.add(r.lease)
				if e.first == 0 {
					e.first = now
				}
				heap.Push(&r.sb.active, e)
				ls[i].tok = token{e, e.gen}
				ls[i].msg = e.msg
				ls[i].d.Attempt = int(e.attempts)
				ls[i].d.FirstDelivered = s.time(e.first)
				size += len(e.msg.Data)
			}
			s.mu.Unlock()
			// The deliveries are built with the store unlocked, from what
			// does not change once stored: the message, and the attempt
			// and first delivery as this lease saw them.
			//
			// The handler gets its own copy of the data, which it may
			// write to. Attrs is shared with the store: the core only
			// reads a delivery's attributes (into the Event's fields and a
			// Headers map of its own).
			buf := make([]byte, 0, size)
			for i := range ls {
				l := &ls[i]
				msg := l.msg
				l.d.Message = *msg
				l.d.Token = &l.tok
				if msg.Data != nil {
					at := len(buf)
					buf = append(buf, msg.Data...)
					l.d.Data = buf[at:len(buf):len(buf)]
				}
				out[i] = &l.d
			}
			return out, nil
		}
		ch := r.sb.changed
		r.sb.waiters++
		wakeAt := r.sb.nextWake()
		s.mu.Unlock()

		var timer *time.Timer
		var due <-chan time.Time
		if wakeAt != 0 {
			timer = time.NewTimer(max(time.Until(s.time(wakeAt)), 0) + time.Millisecond)
			due = timer.C
		}
		select {
		case <-ch:
		case <-due:
		case <-ctx.Done():
		}
		if timer != nil {
			timer.Stop()
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

func (r *receiver) Settle(ctx context.Context, ss []transport.Settlement) error {
	if r.d.isClosed() {
		return ErrClosed
	}
	s := r.sb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.tick(s.now())
	woke := false
	for _, st := range ss {
		tk, ok := st.Delivery.Token.(*token)
		if !ok || tk.e.gen != tk.gen || tk.e.state != stActive {
			continue // lease lost to another receiver
		}
		e := tk.e
		heap.Remove(&r.sb.active, int(e.index))
		e.gen++
		switch st.Outcome {
		case transport.Complete:
			e.state, e.finished = stDone, now
			r.sb.done = appendKept(r.sb.done, &r.sb.doneBuf, e)
			r.sb.finish(e, now)
			woke = true
		case transport.Dead:
			e.failures++
			e.state, e.finished, e.lastErr = stDead, now, st.Error
			r.sb.dead = appendKept(r.sb.dead, &r.sb.deadBuf, e)
			r.sb.finish(e, now)
			woke = true
		case transport.Retry, transport.Release:
			if st.Outcome == transport.Release {
				e.attempts--
			} else {
				e.failures++
				e.lastErr = st.Error
			}
			e.runAt = now.add(st.Delay)
			r.sb.schedule(e, now)
			woke = true
		default:
			return fmt.Errorf("memory transport: unknown outcome %d", st.Outcome)
		}
	}
	r.sb.retain(now)
	if woke {
		r.sb.wake()
	}
	return nil
}

func (r *receiver) Extend(ctx context.Context, ds []*transport.Delivery, lease time.Duration) error {
	if r.d.isClosed() {
		return ErrClosed
	}
	s := r.sb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.tick(s.now())
	for _, d := range ds {
		tk, ok := d.Token.(*token)
		if !ok || tk.e.gen != tk.gen || tk.e.state != stActive {
			continue
		}
		tk.e.leaseEnd = now.add(lease)
		heap.Fix(&r.sb.active, int(tk.e.index))
	}
	return nil
}

// Close stops receiving. The last receiver of an ephemeral subscription
// deletes it, with everything queued for it.
func (r *receiver) Close() error {
	s := r.sb.s
	r.d.mu.Lock()
	delete(r.d.recvs, r)
	r.d.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.sb.holders--
	if r.sb.ephemeral && r.sb.holders == 0 && s.subs[r.sb.name] == r.sb {
		s.deleteSub(r.sb)
	}
	return nil
}

// ---- optional interfaces ----

func (d *driver) Stats(ctx context.Context) ([]transport.Stats, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.tick(s.now())
	out := make([]transport.Stats, 0, len(s.subs))
	for _, sb := range s.subs {
		sb.promote(now)
		st := transport.Stats{
			Handler: sb.name, Pattern: sb.pattern,
			Waiting:   int64(sb.ready.Len()),
			Active:    int64(sb.active.Len()),
			Delayed:   int64(sb.delayed.Len()),
			Completed: int64(len(sb.done)),
			Dead:      int64(len(sb.dead)),
			Paused:    sb.paused,
		}
		for _, q := range sb.keys {
			for _, e := range q {
				if e.state == stBlocked {
					st.Waiting++
				}
			}
		}
		var oldest tick
		for _, e := range sb.ready.all() {
			if oldest == 0 || e.published < oldest {
				oldest = e.published
			}
		}
		if oldest != 0 {
			st.OldestWaiting = time.Duration(now - oldest)
		}
		for _, list := range [][]*entry{sb.ready.all(), sb.delayed.items, sb.active.items, sb.done, sb.dead} {
			for _, e := range list {
				st.Failed += int64(e.failures)
			}
		}
		out = append(out, st)
	}
	sortStats(out)
	return out, nil
}

func sortStats(s []transport.Stats) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].Handler < s[j-1].Handler; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func (d *driver) lookup(handler string) (*sub, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	sb := d.s.subs[handler]
	if sb == nil {
		return nil, fmt.Errorf("memory transport: handler %q: %w", handler, transport.ErrNotFound)
	}
	return sb, nil
}

func (d *driver) DeadLetters(ctx context.Context, handler string, limit int) ([]transport.DeadLetter, error) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	sb, err := d.lookup(handler)
	if err != nil {
		return nil, err
	}
	out := make([]transport.DeadLetter, 0, min(limit, len(sb.dead)))
	for _, e := range sb.dead {
		if len(out) == limit {
			break
		}
		out = append(out, transport.DeadLetter{Message: *copyMessage(e.msg), Handler: handler, Attempts: int(e.attempts), Error: e.lastErr, FirstAttempt: d.s.time(e.first), DeadAt: d.s.time(e.finished)})
	}
	return out, nil
}

func selected(ids []string) func(string) bool {
	if len(ids) == 0 {
		return func(string) bool { return true }
	}
	set := make(map[string]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	return func(id string) bool { return set[id] }
}

func (d *driver) Requeue(ctx context.Context, handler string, ids []string) (int, error) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	sb, err := d.lookup(handler)
	if err != nil {
		return 0, err
	}
	now := d.s.tick(d.s.now())
	taken := sb.takeDead(ids)
	for _, e := range taken {
		sb.add(&entry{msg: e.msg, seq: e.seq, runAt: now, published: e.published}, now)
	}
	sb.wake()
	return len(taken), nil
}

func (d *driver) Purge(ctx context.Context, handler string, ids []string) (int, error) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	sb, err := d.lookup(handler)
	if err != nil {
		return 0, err
	}
	return len(sb.takeDead(ids)), nil
}

// takeDead removes the dead letters with the given ids (all when ids is
// empty) and returns them in dead-letter order.
func (sb *sub) takeDead(ids []string) []*entry {
	want := selected(ids)
	var taken []*entry
	keep := sb.dead[:0]
	for _, e := range sb.dead {
		if want(e.msg.ID) {
			taken = append(taken, e)
		} else {
			keep = append(keep, e)
		}
	}
	clear(sb.dead[len(keep):])
	sb.dead = keep
	return taken
}

// unfinished returns the seqs of the events the subscription has not
// finished: ready, delayed, leased or blocked behind their key. Replay
// leaves them be, as they are delivered anyway.
func (sb *sub) unfinished() map[uint64]bool {
	out := map[uint64]bool{}
	add := func(es []*entry) {
		for _, e := range es {
			if e.state < stDone {
				out[e.seq] = true
			}
		}
	}
	for _, q := range sb.ready.buckets {
		add(q.items[q.head:])
	}
	add(sb.delayed.items)
	add(sb.active.items)
	for _, es := range sb.keys {
		add(es)
	}
	return out
}

func (d *driver) Replay(ctx context.Context, handler string, since time.Time) (int, error) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	sb, err := d.lookup(handler)
	if err != nil {
		return 0, err
	}
	now := d.s.tick(d.s.now())
	sinceTick := d.s.tick(since)
	n := 0
	busy := sb.unfinished()
	// The failed attempts of a finished event stay counted when it is
	// replayed.
	failures := map[uint64]int32{}
	for _, e := range sb.done {
		failures[e.seq] += e.failures
	}
	for _, e := range sb.dead {
		failures[e.seq] += e.failures
	}
	replayed := map[uint64]bool{}
	replay := func(msg *transport.Message, seq uint64, at tick) {
		if at < sinceTick || !transport.Match(sb.pattern, msg.Type) || busy[seq] || replayed[seq] {
			return
		}
		replayed[seq] = true
		sb.add(&entry{msg: msg, seq: seq, runAt: now, published: at, failures: failures[seq]}, now)
		n++
	}
	for _, h := range d.s.history[d.s.histHead:] {
		replay(h.msg, h.seq, h.at)
	}
	// Finished events kept longer than the publish history (dead letters
	// are kept for DeadAge) are replayed from their own entries.
	for _, es := range [][]*entry{sb.done, sb.dead} {
		for _, e := range es {
			replay(e.msg, e.seq, e.published)
		}
	}
	// A replayed event is delivered afresh: it leaves the completed
	// history and the dead-letter queue.
	keep := func(es []*entry) []*entry {
		return slices.DeleteFunc(es, func(e *entry) bool { return replayed[e.seq] })
	}
	sb.done, sb.dead = keep(sb.done), keep(sb.dead)
	sb.wake()
	return n, nil
}

func (d *driver) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	if d.isClosed() {
		return 0, ErrClosed
	}
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	k := claimKey{handler, eventID}
	c := s.claims[k]
	switch {
	case c == nil:
		s.claims[k] = &claim{until: now.Add(lease)}
		return transport.Claimed, nil
	case c.done:
		return transport.Done, nil
	case c.until.After(now):
		return transport.Busy, nil
	}
	c.until = now.Add(lease)
	return transport.Claimed, nil
}

func (d *driver) Finish(ctx context.Context, handler, eventID string, success bool) error {
	if d.isClosed() {
		return ErrClosed
	}
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k := claimKey{handler, eventID}
	if success {
		// Done claims are remembered for the dedup window.
		s.claims[k] = &claim{done: true, until: s.now().Add(s.ret.DedupWindow)}
		s.pruneClaims()
	} else {
		delete(s.claims, k)
	}
	return nil
}

// Reserve implements transport.RateLimiter for every bus sharing the
// store: at most n reservations start in any interval of length per (a
// sliding window).
func (d *driver) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	if d.isClosed() {
		return 0, ErrClosed
	}
	if n <= 0 || per <= 0 {
		return 0, errors.New("memory transport: a rate limit needs n > 0 and a positive period")
	}
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.limits[handler]
	if w == nil || !sameLimit(w, n, per) {
		w = ratewindow.New(n, per)
		s.limits[handler] = w
	}
	return w.Reserve(s.now()), nil
}

func sameLimit(w *ratewindow.Window, n int, per time.Duration) bool {
	wn, wper := w.Limit()
	return wn == n && wper == per
}

// pruneClaims drops expired claims once the map has grown, amortised.
func (s *store) pruneClaims() {
	if len(s.claims) < 2*MaxHistory {
		return
	}
	now := s.now()
	for k, c := range s.claims {
		if c.until.Before(now) {
			delete(s.claims, k)
		}
	}
}

// ---- heaps ----

// readyQueue holds deliverable entries: highest priority first, and
// first in, first out within a priority. Buckets per priority make push and
// pop O(1) for the common case of few distinct priorities.
type readyQueue struct {
	prios   []int // distinct priorities with entries, highest first
	buckets map[int]*fifo
	n       int
}

type fifo struct {
	items []*entry
	head  int
}

func (q *readyQueue) Len() int { return q.n }

func (q *readyQueue) push(e *entry) {
	p := e.msg.Priority
	b := q.buckets[p]
	if b == nil {
		if q.buckets == nil {
			q.buckets = map[int]*fifo{}
		}
		b = &fifo{}
		q.buckets[p] = b
	}
	if b.head == len(b.items) {
		// An empty bucket (new, or kept for reuse) joins the priorities.
		i := sort.Search(len(q.prios), func(i int) bool { return q.prios[i] < p })
		q.prios = slices.Insert(q.prios, i, p)
	}
	if len(b.items) == cap(b.items) {
		if b.head > 0 && b.head >= len(b.items)/2 {
			// Half the array is popped: move the queue to its start.
			n := copy(b.items, b.items[b.head:])
			clear(b.items[n:])
			b.items, b.head = b.items[:n], 0
		} else {
			// Double, where append grows a large slice by a quarter, so
			// that a growing backlog copies each entry about once.
			b.items = slices.Grow(b.items, len(b.items))
		}
	}
	b.items = append(b.items, e)
	q.n++
}

// spareBuckets is how many emptied priority buckets a ready queue keeps
// for reuse, so that a queue that keeps draining to empty does not
// allocate a bucket per event.
const spareBuckets = 16

func (q *readyQueue) pop() *entry {
	p := q.prios[0]
	b := q.buckets[p]
	e := b.items[b.head]
	b.items[b.head] = nil
	b.head++
	q.n--
	switch {
	case b.head == len(b.items):
		// Deleting the first priority in place keeps the slice's
		// capacity, which re-slicing would give up.
		q.prios = slices.Delete(q.prios, 0, 1)
		if len(q.buckets)-len(q.prios) > spareBuckets {
			delete(q.buckets, p)
		} else {
			b.items, b.head = b.items[:0], 0
		}
	case b.head > 1024 && b.head*2 >= len(b.items):
		// Compact in place: the array is the queue's high-water mark.
		n := copy(b.items, b.items[b.head:])
		clear(b.items[n:])
		b.items, b.head = b.items[:n], 0
	}
	return e
}

func (q *readyQueue) all() []*entry {
	out := make([]*entry, 0, q.n)
	for _, p := range q.prios {
		b := q.buckets[p]
		out = append(out, b.items[b.head:]...)
	}
	return out
}

// timeHeap orders entries by runAt, or by leaseEnd when byLease, and by
// seq within a tick.
type timeHeap struct {
	items   []*entry
	byLease bool
}

func (h timeHeap) Len() int { return len(h.items) }
func (h timeHeap) Less(i, j int) bool {
	x, y := h.items[i], h.items[j]
	a, b := x.runAt, y.runAt
	if h.byLease {
		a, b = x.leaseEnd, y.leaseEnd
	}
	if a != b {
		return a < b
	}
	return x.seq < y.seq
}
func (h timeHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].index, h.items[j].index = int32(i), int32(j)
}
func (h *timeHeap) Push(x any) {
	e := x.(*entry)
	e.index = int32(len(h.items))
	h.items = append(h.items, e)
}
func (h *timeHeap) Pop() any {
	n := len(h.items) - 1
	e := h.items[n]
	h.items[n] = nil
	h.items = h.items[:n]
	e.index = -1
	return e
}

// Unsubscribe implements transport.Unsubscriber. Receivers of the deleted
// subscription get nothing more.
func (d *driver) Unsubscribe(ctx context.Context, handler string) error {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	sb, err := d.lookup(handler)
	if err != nil {
		return err
	}
	d.s.deleteSub(sb)
	delete(d.s.limits, handler)
	return nil
}

// Pause implements transport.Pauser: receivers of every bus sharing the
// store get nothing until Resume.
func (d *driver) Pause(ctx context.Context, handler string) error {
	return d.setPaused(handler, true)
}

// Resume implements transport.Pauser.
func (d *driver) Resume(ctx context.Context, handler string) error {
	return d.setPaused(handler, false)
}

func (d *driver) setPaused(handler string, paused bool) error {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	sb, err := d.lookup(handler)
	if err != nil {
		return err
	}
	sb.paused = paused
	sb.wake()
	return nil
}

// deleteSub deletes a subscription with everything queued for it and its
// claims. s.mu must be held.
func (s *store) deleteSub(sb *sub) {
	handler := sb.name
	delete(s.subs, handler)
	clear(s.routes)
	for k := range s.claims {
		if k.handler == handler {
			delete(s.claims, k)
		}
	}
	// Receivers of other buses sharing the store may still hold leases:
	// a new generation makes their tokens stale, so a later Settle or
	// Extend skips the entry instead of reaching into the emptied heap.
	for _, e := range sb.active.items {
		e.gen++
		e.index = -1
	}
	sb.ready, sb.delayed.items, sb.active.items = readyQueue{}, nil, nil
	sb.keys, sb.done, sb.dead = map[string][]*entry{}, nil, nil
	sb.doneBuf, sb.deadBuf = nil, nil
	sb.wake()
}
