package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/sidestore"
)

// StoreDriver is the Kafka transport opened with a side store (the
// store= URL parameter, or its older spelling claims=): the store keeps
// what Kafka cannot, atomically as the store does and shared by every
// process that names it: Idempotent() handlers' claims, the identities of
// published events (publish deduplication, WithID), and, when the store
// keeps them (redis, sqlite, postgres), shared rate-limit windows. It is
// otherwise the Driver.
type StoreDriver struct {
	*Driver
	store     *sidestore.Store
	closeOnce sync.Once
	closeErr  error
}

var _ interface {
	transport.Claimer
	transport.RateLimiter
} = (*StoreDriver)(nil)

// Capabilities are the Driver's, with publish deduplication, and a shared
// rate limit when the store keeps rate-limit windows.
func (s *StoreDriver) Capabilities() transport.Capabilities {
	c := s.Driver.Capabilities()
	c.Dedup = true
	c.SharedRateLimit = s.store.SharedRateLimit()
	return c
}

// Publish produces messages as Driver.Publish does, first claiming the
// identity (source and id) of each whose id the publisher chose in the
// store: an identity already published stores nothing and is reported as
// a duplicate, with the event Kafka kept (read back from the event topic)
// when it can still be found there.
func (s *StoreDriver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if s.isClosed() {
		return ErrClosed
	}
	if err := s.store.Send(ctx, msgs, s.Driver.Publish); err != nil {
		return err
	}
	var dups []*transport.Message
	for _, m := range msgs {
		if m.Duplicate != nil {
			dups = append(dups, m)
		}
	}
	if len(dups) > 0 {
		s.findKept(ctx, dups)
	}
	return nil
}

// keptSearch bounds how far back from the end of the event topic a
// duplicate's kept copy is looked for, per partition, in records: a
// publish retried after a lost reply finds it in the first step.
var keptSearch = []int64{256, 8192, 262144}

// findKept replaces each message's Duplicate (the message as resent) by
// the copy the event topic holds, read back from the end of the
// partitions it can be in. A copy not found (trimmed by retention, or
// further back than keptSearch) leaves the resent message, with a log
// line: the publish is still deduplicated.
func (s *StoreDriver) findKept(ctx context.Context, dups []*transport.Message) {
	ends, err := s.adm.ListEndOffsets(ctx, s.topic)
	if err == nil {
		err = ends.Error()
	}
	var starts kadm.ListedOffsets
	if err == nil {
		starts, err = s.adm.ListStartOffsets(ctx, s.topic)
		if err == nil {
			err = starts.Error()
		}
	}
	if err != nil {
		s.log.Warn("kafka: a duplicate publish is reported with the event as resent: reading the kept copy failed", "err", err)
		return
	}
	n := 0
	ends.Each(func(kadm.ListedOffset) { n++ })
	// Where each identity can be: a keyed event in its key's partition
	// (the producer's partitioner), a keyless one anywhere.
	want := map[string]*transport.Message{}
	parts := map[int32]bool{}
	part := kgo.StickyKeyPartitioner(nil).ForTopic(s.topic)
	for _, m := range dups {
		want[transport.IdentityKey(m.Source(), m.ID)] = m
		if m.Key == "" || n == 0 {
			ends.Each(func(o kadm.ListedOffset) { parts[o.Partition] = true })
			continue
		}
		parts[int32(part.Partition(&kgo.Record{Key: []byte(m.Key)}, n))] = true
	}
	floor := map[int32]int64{}
	upper := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if parts[o.Partition] {
			upper[o.Partition] = o.Offset
			floor[o.Partition] = 0
			if so, ok := starts.Lookup(s.topic, o.Partition); ok {
				floor[o.Partition] = so.Offset
			}
		}
	})
	for _, back := range keptSearch {
		if len(want) == 0 || len(upper) == 0 {
			break
		}
		from := map[int32]int64{}
		to := map[int32]int64{}
		for p, end := range upper {
			from[p] = max(end-back, floor[p])
			to[p] = end
		}
		err := s.scanRange(ctx, s.topic, from, to, func(r *kgo.Record) {
			dec := decode(r)
			k := transport.IdentityKey(dec.msg.Source(), dec.msg.ID)
			if m, ok := want[k]; ok {
				kept := dec.msg
				kept.Duplicate = nil
				m.Duplicate = &kept
				delete(want, k)
			}
		})
		if err != nil {
			break
		}
		for p := range upper {
			if from[p] <= floor[p] {
				delete(upper, p)
			} else {
				upper[p] = from[p]
			}
		}
	}
	for _, m := range want {
		s.log.Warn("kafka: a duplicate publish is reported with the event as resent: its kept copy was not found near the end of the event topic",
			"event", m.ID, "source", m.Source())
	}
}

// scanRange reads the records of topic from from[p] up to to[p] (not
// included) of each partition p, calling fn for each.
func (d *Driver) scanRange(ctx context.Context, topic string, from, to map[int32]int64, fn func(*kgo.Record)) error {
	want := map[string]map[int32]kgo.Offset{topic: {}}
	left := map[int32]int64{}
	for p, f := range from {
		if f < to[p] {
			want[topic][p] = kgo.NewOffset().At(f)
			left[p] = to[p]
		}
	}
	if len(left) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(append(append([]kgo.Opt(nil), d.base...),
		kgo.ConsumePartitions(want), kgo.FetchMaxWait(100*time.Millisecond))...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for len(left) > 0 {
		fs := cl.PollFetches(sctx)
		if err := sctx.Err(); err != nil {
			return fmt.Errorf("kafka: reading %s: %w", topic, err)
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			ferr = errors.Join(ferr, fmt.Errorf("kafka: reading %s partition %d: %w", t, p, err))
		})
		if ferr != nil {
			return ferr
		}
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := left[r.Partition]
			if !ok || r.Offset >= end {
				return
			}
			fn(r)
			if r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return nil
}

// Claim takes an idempotency claim in the store.
func (s *StoreDriver) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	return s.store.Claim(ctx, handler, eventID, lease)
}

// Finish settles an idempotency claim in the store.
func (s *StoreDriver) Finish(ctx context.Context, handler, eventID string, success bool) error {
	return s.store.Finish(ctx, handler, eventID, success)
}

// Reserve takes a slot of handler's rate limit in the store, shared by
// every process (Capabilities.SharedRateLimit says whether the store
// keeps rate-limit windows; without them Reserve fails).
func (s *StoreDriver) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	return s.store.Reserve(ctx, handler, n, per)
}

// Close closes the Kafka clients and the store.
func (s *StoreDriver) Close() error {
	s.closeOnce.Do(func() { s.closeErr = errors.Join(s.Driver.Close(), s.store.Close()) })
	return s.closeErr
}
