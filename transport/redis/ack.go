package redis

import (
	"context"
	"strings"
	"sync"
	"time"
)

// ackChunk bounds the ids of one XACK command.
const ackChunk = 1000

// ackLinger is how long the acker lets completions gather before it sends
// them. Nothing waits on an acknowledgement, so the delay costs nothing
// but a slightly later drop of the pending count, and at a few thousand
// events per second it turns one XACK per event into one per dozens.
const ackLinger = time.Millisecond

// ackRetryFor bounds how long a failing acknowledgement is retried (Redis
// restarting, say) before it is given up: by then the leases of most of
// its entries have run out and the entries are delivered again anyway.
const ackRetryFor = 10 * time.Second

// An acker acknowledges completed deliveries in the background. Settle
// queues a completion and returns; one goroutine at a time sends every
// queued id as one XACK per subscription, so a completion costs a share of
// a round trip rather than a round trip of its own, and a handler's slot is
// free as soon as its handler returns. Like a broker's acknowledgement, one
// lost to a crash only means its event is delivered again.
//
// A completion needs no check that the lease is still held: the event was
// handled, so acknowledging it is right even when another receiver has
// taken it over meanwhile.
type acker struct {
	d *Driver

	mu      sync.Mutex
	sent    *sync.Cond // signalled when a batch has been sent
	queue   map[*subscription][]string
	queued  uint64 // completions queued so far
	done    uint64 // completions sent (or given up) so far
	running bool
}

func newAcker(d *Driver) *acker {
	a := &acker{d: d, queue: map[*subscription][]string{}}
	a.sent = sync.NewCond(&a.mu)
	return a
}

// add queues completions of s's entries.
func (a *acker) add(s *subscription, ids []string) {
	a.mu.Lock()
	a.queue[s] = append(a.queue[s], ids...)
	a.queued += uint64(len(ids))
	start := !a.running
	a.running = true
	a.mu.Unlock()
	if start {
		go a.run()
	}
}

// run sends queued completions until the queue is empty.
func (a *acker) run() {
	for {
		time.Sleep(ackLinger)
		a.mu.Lock()
		if len(a.queue) == 0 {
			a.running = false
			a.mu.Unlock()
			return
		}
		batch, upto := a.queue, a.queued
		a.queue = make(map[*subscription][]string, len(batch))
		a.mu.Unlock()

		a.send(batch)

		a.mu.Lock()
		a.done = upto
		a.sent.Broadcast()
		a.mu.Unlock()
	}
}

// send acknowledges one batch, retrying while Redis is unreachable.
func (a *acker) send(batch map[*subscription][]string) {
	start := time.Now()
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		err := a.exec(batch)
		if err == nil {
			return
		}
		if time.Since(start) > ackRetryFor || a.d.isClosed() {
			n := 0
			for _, ids := range batch {
				n += len(ids)
			}
			a.d.log.Warn("redis transport: could not acknowledge completed events; they are delivered again after their leases",
				"events", n, "err", err)
			return
		}
		time.Sleep(wait)
	}
}

// exec sends one XACK per subscription and chunk in one pipeline. It
// returns the first error; acknowledging twice is harmless, so a retry
// resends the whole batch. A subscription whose consumer group is gone
// (unsubscribed) has nothing left to acknowledge.
func (a *acker) exec(batch map[*subscription][]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pipe := a.d.client.Pipeline()
	for s, ids := range batch {
		for i := 0; i < len(ids); i += ackChunk {
			pipe.XAck(ctx, s.stream, s.name, ids[i:min(i+ackChunk, len(ids))]...)
		}
	}
	cmds, _ := pipe.Exec(ctx)
	var first error
	for _, c := range cmds {
		if err := c.Err(); err != nil && !strings.Contains(err.Error(), "NOGROUP") && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	for s, ids := range batch {
		s.completed(int64(len(ids)))
	}
	return nil
}

// flush waits until every completion queued before the call has been sent,
// or ctx ends.
func (a *acker) flush(ctx context.Context) error {
	a.mu.Lock()
	target := a.queued
	if a.done >= target {
		a.mu.Unlock()
		return nil
	}
	stop := context.AfterFunc(ctx, func() {
		a.mu.Lock()
		a.sent.Broadcast()
		a.mu.Unlock()
	})
	defer stop()
	for a.done < target && ctx.Err() == nil {
		a.sent.Wait()
	}
	a.mu.Unlock()
	return ctx.Err()
}
