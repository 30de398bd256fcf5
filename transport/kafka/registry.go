package kafka

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple/transport"
)

// The registry is the namespace's compacted topic NAMESPACE.subscriptions
// (one partition). A handler's entry is a record keyed by its name whose
// value is its pattern; a durable handler's entry has no ripple_ephemeral
// header, an ephemeral one's carries the unix ms until which it is live,
// renewed while its receivers run. A tombstone (nil value) removes an
// entry. Keys starting with pausePrefix hold pause records instead.

// hEphemeral marks an ephemeral handler's registry entry; its value is the
// unix ms until which the entry is live unless renewed.
const hEphemeral = "ripple_ephemeral"

// regEntry is a handler as the registry records it.
type regEntry struct {
	pattern   string
	ephemeral bool
	until     time.Time // ephemeral: live until then
}

// live reports whether an entry belongs to a handler that may be running:
// a durable one always, an ephemeral one while its heartbeat is fresh.
func (e regEntry) live(now time.Time) bool {
	return !e.ephemeral || e.until.After(now)
}

// parseEntry reads a registry record; ok is false for a tombstone.
func parseEntry(r *kgo.Record) (e regEntry, ok bool) {
	if r.Value == nil {
		return e, false
	}
	e.pattern = string(r.Value)
	for _, h := range r.Headers {
		if h.Key == hEphemeral {
			e.ephemeral = true
			e.until = unixMilli(string(h.Value))
		}
	}
	return e, true
}

// subscriptions reads the registry: handler name to entry.
func (d *Driver) subscriptions(ctx context.Context) (map[string]regEntry, error) {
	out := map[string]regEntry{}
	err := d.scan(ctx, d.registryTopic(), nil, func(r *kgo.Record) {
		if strings.HasPrefix(string(r.Key), pausePrefix) {
			return
		}
		if e, ok := parseEntry(r); ok {
			out[string(r.Key)] = e
		} else {
			delete(out, string(r.Key))
		}
	})
	return out, err
}

// ephemeralTTL is how long an ephemeral handler's entry stays live without
// renewal: a few leases, and at least 15s so that a busy machine or a
// little clock skew between processes does not drop a running one.
func ephemeralTTL(lease time.Duration) time.Duration {
	return max(3*lease, 15*time.Second)
}

// register records a handler in the registry, read by Stats, Replay and
// the dead-letter calls of processes that do not run it, and returns the
// record's offset. An ephemeral handler's entry is live for
// ephemeralTTL(lease).
func (d *Driver) register(ctx context.Context, name, pattern string, ephemeral bool, lease time.Duration) (int64, error) {
	// The topic is compacted: writing the same pattern again costs one
	// record, less than reading the registry to compare.
	r := &kgo.Record{Topic: d.registryTopic(), Key: []byte(name), Value: []byte(pattern)}
	if ephemeral {
		r.Headers = []kgo.RecordHeader{msHeader(hEphemeral, time.Now().Add(ephemeralTTL(lease)))}
	}
	if err := d.produce(ctx, []*kgo.Record{r}); err != nil {
		return -1, fmt.Errorf("kafka: recording handler %s in %s: %w", name, d.registryTopic(), err)
	}
	return r.Offset, nil
}

// unregister tombstones a handler's registry entry; compaction removes it.
func (d *Driver) unregister(ctx context.Context, name string) error {
	return d.produce(ctx, []*kgo.Record{{Topic: d.registryTopic(), Key: []byte(name), Value: nil}})
}

// refuseKindClash refuses an ephemeral subscription under a durable
// handler's name and a durable one under a running ephemeral handler's
// name: the ephemeral one's entry would replace the durable one's in the
// registry and be removed with it when it closes.
func (d *Driver) refuseKindClash(ctx context.Context, spec transport.SubscriptionSpec) error {
	subs, err := d.subscriptions(ctx)
	if err != nil {
		return err
	}
	e, ok := subs[spec.Name]
	if spec.Ephemeral {
		if ok && !e.ephemeral {
			return durableClash(spec.Name)
		}
		// A durable handler whose entry is missing still has its
		// consumer group's offsets.
		group := d.groupName(spec.Name)
		committed, err := d.adm.FetchOffsets(ctx, group)
		if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
			return fmt.Errorf("kafka: reading the offsets of consumer group %s: %w", group, err)
		}
		if _, ok := committed[d.topic]; ok {
			return durableClash(spec.Name)
		}
		return nil
	}
	if ok && e.ephemeral && e.live(time.Now()) {
		return ephemeralClash(spec.Name)
	}
	return nil
}

func durableClash(name string) error {
	return fmt.Errorf("kafka: handler %s is durable; give the ephemeral subscription a name of its own", name)
}

func ephemeralClash(name string) error {
	return fmt.Errorf("kafka: handler %s is an ephemeral subscription that is running; give the durable handler a name of its own", name)
}

// heartbeatLoop renews an ephemeral handler's registry entry while its
// receivers run, so that Stats in other processes lists it; once the
// process dies the entry goes stale and the next Stats removes it.
func (g *group) heartbeatLoop() {
	defer g.loops.Done()
	t := time.NewTicker(ephemeralTTL(g.lease) / 5)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(g.ctx, ephemeralTTL(g.lease)/2)
			_, err := g.d.register(ctx, g.name, g.pattern, true, g.lease)
			cancel()
			if err != nil && g.ctx.Err() == nil {
				g.d.log.Warn("kafka: renewing an ephemeral handler's registry entry failed", "handler", g.name, "err", err)
			}
		}
	}
}

// reassert writes again the registry entries of handlers running in this
// process that a record after their own registration removed (a Stats
// elsewhere that took a stale ephemeral entry away just as the name was
// taken again) or, for a durable handler, replaced by an ephemeral entry.
func (d *Driver) reassert(ctx context.Context, recs []*kgo.Record) {
	// The latest record of each key decides.
	last := map[string]*kgo.Record{}
	for _, r := range recs {
		if !strings.HasPrefix(string(r.Key), pausePrefix) {
			last[string(r.Key)] = r
		}
	}
	for name, r := range last {
		d.mu.Lock()
		g := d.groups[name]
		d.mu.Unlock()
		if g == nil {
			continue
		}
		g.mu.Lock()
		after := !g.closed && r.Offset > g.regOff
		g.mu.Unlock()
		if !after {
			continue
		}
		if e, ok := parseEntry(r); ok && (g.ephemeral || !e.ephemeral) {
			continue
		}
		if _, err := d.register(ctx, g.name, g.pattern, g.ephemeral, g.lease); err != nil && ctx.Err() == nil {
			d.log.Warn("kafka: recording a running handler in the registry again failed", "handler", g.name, "err", err)
		}
	}
}

// ephemeralStats are the statistics of an ephemeral handler: from this
// process's memory when it runs here, zero counts when it runs elsewhere
// (its state lives only in its own process).
func (d *Driver) ephemeralStats(handler, pattern string) transport.Stats {
	st := transport.Stats{Handler: handler, Pattern: pattern, Paused: d.isPaused(handler)}
	g := d.localEphemeral(handler)
	if g == nil {
		return st
	}
	now := time.Now()
	var oldest time.Time
	var completed int64
	g.mu.Lock()
	for _, pt := range g.parts {
		c := countEntries(pt, now)
		st.Waiting += c.waiting
		st.Active += c.active
		st.Delayed += c.delayed
		st.Failed += pt.failed
		completed += pt.completed
		if !c.oldest.IsZero() && (oldest.IsZero() || c.oldest.Before(oldest)) {
			oldest = c.oldest
		}
	}
	g.mu.Unlock()
	if !oldest.IsZero() && st.Waiting > 0 {
		st.OldestWaiting = max(now.Sub(oldest), 0)
	}
	if ret := d.cfg.Retention; ret.CompletedCount > 0 && ret.CompletedAge > 0 {
		st.Completed = min(completed, int64(ret.CompletedCount))
	}
	return st
}

// localEphemeral returns the ephemeral handler's group when it runs in
// this process.
func (d *Driver) localEphemeral(handler string) *group {
	d.mu.Lock()
	g := d.groups[handler]
	d.mu.Unlock()
	if g == nil || !g.ephemeral {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	return g
}

// dropEntry tombstones an ephemeral handler's registry entry once it
// stopped; a failure leaves a stale entry that the next Stats removes.
func (d *Driver) dropEntry(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.unregister(ctx, name); err != nil {
		d.log.Warn("kafka: removing an ephemeral handler's registry entry failed; it goes stale and is removed later", "handler", name, "err", err)
	}
}
