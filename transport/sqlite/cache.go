package sqlite

import "github.com/ripplehq/ripple/transport"

// The recent-events cache: the events this process published, by seq, so
// that leasing them (often moments later, once per subscription) neither
// scans the log for their types nor reads them back. Events never change
// and a seq after a subscription's head is never pruned or reused, so an
// entry is always right; an event missing from it (published by another
// process, or evicted) is read from the file.

// cachedEvent is an event published in the current transaction, which
// joins the cache after COMMIT (a rolled-back seq may be reused). msg is a
// copy deliverable as it is, or nil when only the entry's type and
// routing are kept (a delayed event, one no subscription matched).
type cachedEvent struct {
	seq    int64
	msg    *transport.Message
	typ    string
	routed bool
}

// eventCacheSize bounds the recent-events cache by count: enough for the
// events waiting to be leased behind a few full receive batches;
// eventCacheBytes bounds the payloads it holds, so that large events do
// not make it large.
const (
	eventCacheSize  = 16384
	eventCacheBytes = 16 << 20
)

// cacheEntry is what the cache keeps of an event: its log entry's type
// and routing (delayed or prioritised) always, the event itself when it
// can be delivered from here.
type cacheEntry struct {
	msg    *transport.Message
	typ    string
	routed bool
}

// eventCache maps seq to event for the most recent events, up to
// eventCacheSize of them and eventCacheBytes of payload, evicting the
// oldest.
type eventCache struct {
	m     map[int64]cacheEntry
	ring  [eventCacheSize]int64
	next  int // the slot of the oldest entry, and of the next put
	bytes int
}

func (c *eventCache) put(e cachedEvent) {
	if c.m == nil {
		c.m = make(map[int64]cacheEntry, eventCacheSize)
	}
	c.evict(c.next)
	size := 0
	if e.msg != nil {
		size = len(e.msg.Data)
	}
	if size > eventCacheBytes/4 {
		// Keep what a lease needs to know, and read the event back.
		e.msg, size = nil, 0
	}
	// Make room by payload: evict the oldest entries after this slot.
	for i := 1; c.bytes+size > eventCacheBytes && i < eventCacheSize; i++ {
		c.evict((c.next + i) % eventCacheSize)
	}
	c.ring[c.next] = e.seq
	c.next = (c.next + 1) % eventCacheSize
	c.m[e.seq] = cacheEntry{msg: e.msg, typ: e.typ, routed: e.routed}
	c.bytes += size
}

// evict empties ring slot i.
func (c *eventCache) evict(i int) {
	if old := c.ring[i]; old != 0 {
		if e := c.m[old]; e.msg != nil {
			c.bytes -= len(e.msg.Data)
		}
		delete(c.m, old)
		c.ring[i] = 0
	}
}

// get returns the event of seq when the cache can deliver it, else nil.
func (c *eventCache) get(seq int64) *transport.Message { return c.m[seq].msg }

// peek returns the type and routing of seq's log entry, and whether the
// cache knows it.
func (c *eventCache) peek(seq int64) (typ string, routed, ok bool) {
	e, ok := c.m[seq]
	return e.typ, e.routed, ok
}
