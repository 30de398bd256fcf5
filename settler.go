package ripple

import (
	"runtime"
	"sync"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// The settler records a runner's outcomes off the handlers' goroutines.
//
// A handler's goroutine decides the outcome, queues it and goes on to the
// next delivery. One goroutine per runner, started with the first outcome,
// sends everything queued in one Settle call, then everything that was
// queued while that call ran in the next, and waits for more when the
// queue is empty; it ends once the queue is empty and the runner has
// stopped (runCtx). No timer holds a settlement back: an idle runner's
// lone outcome is sent at once, and under load batches form by
// themselves, as large as what accumulated during one Settle.
//
// How Concurrency counts a queued outcome. A handler's slot (Concurrency
// of them) is given back once its outcome is queued, so the next delivery
// may be leased and run while the outcome is being recorded. The queue
// holds at most settleQueueCap outcomes; a handler whose outcome finds it
// full waits, holding its slot, so a slow store holds the runner to
// Concurrency running handlers plus settleQueueCap outcomes waiting to be
// recorded: leases, memory and goroutines stay bounded, and back-pressure
// reaches Receive. An Ordered handler keeps its slot until the outcome is
// recorded: its transport makes the next event of a key deliverable only
// once the previous one's outcome is recorded, and a Receive that came
// sooner would find the key still held and wait for the next wake-up.
//
// A queued delivery is no longer in flight: its lease is not renewed and a
// shutdown that cuts handlers off does not release it; closeAborted waits
// (up to settleTimeout) for the queue to be recorded before closing the
// subscription, so a handled event's Complete stays a Complete. It still
// counts for WaitIdle (busy) and for drained (handlers) until its outcome
// is recorded and the hooks have heard of it.

// settleQueueCap is how many outcomes of a runner may wait to be recorded:
// its Concurrency, within [16, 256].
func settleQueueCap(concurrency int) int {
	return min(max(concurrency, 16), 256)
}

// A queued outcome, and what the hooks are told of it once it is
// recorded.
type queuedOutcome struct {
	s transport.Settlement
	// report: tell the hooks once recorded; ev, outcome, err, elapsed and
	// latency are then what they are told.
	report  bool
	ev      *Event
	outcome Outcome
	err     error
	elapsed time.Duration
	latency time.Duration
}

// settler is the state of a runner's outcome queue.
type settler struct {
	mu    sync.Mutex
	queue []queuedOutcome
	// running: the settler goroutine exists; waiting: it waits on wake
	// for an outcome.
	running bool
	waiting bool
	wake    chan struct{} // capacity 1
	// space holds a token per queued outcome not yet recorded.
	space chan struct{}
	// pending counts queued outcomes not yet recorded, for closeAborted.
	pending sync.WaitGroup
}

// settle queues s for d unless abort already took d back, and ends the
// delivery: once the outcome is recorded (or could not be), the hooks hear
// of res (when not nil and recorded) and the delivery's slot is freed. The
// caller gives up d's slot either way.
func (r *runner) settle(d *transport.Delivery, s transport.Settlement, res *queuedOutcome) {
	r.mu.Lock()
	_, mine := r.inflight[d]
	delete(r.inflight, d)
	if mine {
		// Under mu, so that closeAborted, which runs after cutOff took mu,
		// waits for this outcome too.
		r.set.pending.Add(1)
	}
	r.mu.Unlock()
	if !mine {
		// A shutdown took the delivery back first; it is delivered again,
		// and the hooks hear nothing of this attempt.
		r.free()
		return
	}
	q := queuedOutcome{}
	if res != nil {
		q = *res
		q.report = len(r.bus.handleHooks) > 0
	}
	s.Delivery = d
	q.s = s
	r.set.space <- struct{}{} // a full queue holds the slot: back-pressure
	if !r.cfg.ordered {
		<-r.slots
	}
	r.set.mu.Lock()
	r.set.queue = append(r.set.queue, q)
	start, signal := !r.set.running, r.set.waiting
	r.set.running, r.set.waiting = true, false
	r.set.mu.Unlock()
	switch {
	case start:
		go r.flush()
	case signal:
		select {
		case r.set.wake <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// flush records queued outcomes, a batch per Settle call, and waits for
// more when the queue is empty, until the runner stops.
func (r *runner) flush() {
	var batch []queuedOutcome
	var ss []transport.Settlement
	yielded := false
	for {
		r.set.mu.Lock()
		if len(r.set.queue) == 0 && !yielded && r.runCtx.Err() == nil {
			// Before sleeping, let the goroutines ready to run go first:
			// on a busy process they are the handlers about to queue
			// outcomes, which the next Settle then takes in one batch
			// instead of a wake-up and a Settle each. On an idle one this
			// returns at once, so a lone outcome is not held back.
			r.set.mu.Unlock()
			yielded = true
			runtime.Gosched()
			continue
		}
		yielded = false
		if len(r.set.queue) == 0 {
			if r.runCtx.Err() != nil {
				// Stopped: an outcome queued after this (none is, once
				// the handlers have drained or been cut off) would start
				// another settler.
				r.set.running, r.set.waiting = false, false
				r.set.mu.Unlock()
				return
			}
			r.set.waiting = true
			r.set.mu.Unlock()
			select {
			case <-r.set.wake:
			case <-r.runCtx.Done():
			}
			continue
		}
		r.set.waiting = false
		// The drained batch's array becomes the next queue: steady state
		// allocates nothing.
		batch, r.set.queue = r.set.queue, batch[:0]
		r.set.mu.Unlock()
		ss = r.record(batch, ss[:0])
		clear(batch)
		clear(ss)
	}
}

// record settles batch in one call, tells the hooks of what was recorded
// and ends the deliveries. It returns ss, the settlements' buffer, for
// reuse.
func (r *runner) record(batch []queuedOutcome, ss []transport.Settlement) []transport.Settlement {
	for i := range batch {
		ss = append(ss, batch[i].s)
	}
	err := r.sub.Settle(r.settleCtx(), ss)
	if err != nil {
		// Not recorded, or not all of it: the events are delivered again
		// after their leases, and the hooks hear only of outcomes the
		// store holds.
		first := batch[0].s
		r.bus.log.Error("ripple: could not record outcome; the event will be delivered again after its lease",
			"handler", r.name, "event", first.Delivery.ID, "outcome", first.Outcome.String(), "events", len(batch), "err", err)
	}
	for i := range batch {
		q := &batch[i]
		if err == nil && q.report {
			res := HandleResult{Handler: r.name, Event: *q.ev, Outcome: q.outcome, Err: q.err, Duration: q.elapsed, Latency: q.latency}
			for _, h := range r.bus.handleHooks {
				h.OnHandle(res)
			}
		}
		if r.cfg.ordered {
			<-r.slots
		}
		<-r.set.space
	}
	// The batch's deliveries end together: one update of each count.
	n := len(batch)
	r.busy.Add(-int64(n))
	r.handlers.Add(-n)
	r.set.pending.Add(-n)
	return ss
}

// awaitSettled waits up to limit for every queued outcome to be recorded
// (or to fail), and reports whether they were.
func (r *runner) awaitSettled(limit time.Duration) bool {
	done := make(chan struct{})
	go func() {
		r.set.pending.Wait()
		close(done)
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
