package ripple

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// abandonGrace is how long past its Timeout a handler may keep running
// before Ripple stops waiting for it.
const abandonGrace = 2 * time.Second

// maxReceiveBatch caps how many deliveries one Receive call leases.
const maxReceiveBatch = 64

// runner runs one registered handler: it receives leased deliveries,
// runs the handler under the configured policies and settles the outcome.
type runner struct {
	bus     *Bus
	pattern string
	name    string
	fn      HandlerFunc
	// wrapped is fn inside the bus's and the handler's middleware, set
	// when the runner starts.
	wrapped HandlerFunc
	cfg     handlerConfig
	limiter *slidingWindow
	shared  transport.RateLimiter
	claimer transport.Claimer
	// marks, for a handler without Idempotent(), is consulted before a
	// redelivery runs: a handler that marked the event done with
	// CompleteTx is not run again.
	marks transport.TxClaimer

	sub transport.Subscription
	// values is the ctx the bus was started with, whose values handler
	// contexts carry (not its cancellation).
	values     context.Context
	slots      chan struct{}
	work       chan *transport.Delivery // to idle workers
	workers    atomic.Int64             // worker goroutines alive
	recvCtx    context.Context
	recvCancel context.CancelFunc
	// pollCtx, under pollMu, is the ctx of the Receive call under way:
	// Pause cancels it (and makes a new one), so that a Receive that
	// began before the pause stops at once.
	pollMu     sync.Mutex
	pollCtx    context.Context
	pollCancel context.CancelFunc
	// runCtx ends once the handler has drained or on abort; it bounds
	// idempotency claims and the heartbeat.
	runCtx    context.Context
	runCancel context.CancelFunc
	loopDone  chan struct{}
	handlers  sync.WaitGroup
	// busy counts what handlers counts, for WaitIdle: deliveries taken
	// and not yet finished, their outcome recorded and hooks run.
	busy atomic.Int64

	settleDeadline atomic.Pointer[sharedDeadline]
	// set queues outcomes for the settler (settler.go).
	set settler

	mu sync.Mutex
	// inflight maps each leased delivery to its running attempt (nil
	// until the handler starts). Handler contexts do not derive from a
	// shared cancellable parent, which would make every handler start and
	// end contend on that parent's lock; the watch loop and abort cancel
	// them through this map instead.
	inflight map[*transport.Delivery]*flight
	aborted  bool
}

func newRunner(b *Bus, pattern, name string, fn HandlerFunc, cfg handlerConfig) *runner {
	r := &runner{bus: b, pattern: pattern, name: name, fn: fn, cfg: cfg,
		slots:    make(chan struct{}, cfg.concurrency),
		work:     make(chan *transport.Delivery),
		inflight: make(map[*transport.Delivery]*flight),
		loopDone: make(chan struct{}),
	}
	r.set.space = make(chan struct{}, settleQueueCap(cfg.concurrency))
	r.set.wake = make(chan struct{}, 1)
	if cfg.rateN > 0 {
		if rl, ok := b.driver.(transport.RateLimiter); ok && b.caps.SharedRateLimit {
			r.shared = rl
		} else {
			r.limiter = newSlidingWindow(cfg.rateN, cfg.ratePer)
		}
	}
	if cfg.idempotent {
		r.claimer, _ = b.driver.(transport.Claimer)
	}
	if r.claimer == nil {
		r.marks, _ = b.driver.(transport.TxClaimer)
	}
	return r
}

// subscribe creates the runner's subscription; run starts using it.
func (r *runner) subscribe(ctx context.Context) error {
	sub, err := r.bus.driver.Subscribe(ctx, transport.SubscriptionSpec{
		Name:        r.name,
		Pattern:     r.pattern,
		Ordered:     r.cfg.ordered,
		Lease:       r.cfg.lease,
		MaxAttempts: r.cfg.maxAttempts,
		Ephemeral:   r.cfg.ephemeral,
		From:        r.cfg.from,
	})
	if err != nil {
		return r.bus.wrapDriverErr("subscribe "+r.name, err)
	}
	r.sub = sub
	return nil
}

// run starts receiving and handling. Handler contexts carry the values
// of values.
func (r *runner) run(values context.Context) {
	r.values = values
	r.wrapped = chain(r.fn, r.bus.middleware, r.cfg.middleware)
	r.recvCtx, r.recvCancel = context.WithCancel(context.Background())
	r.pollMu.Lock()
	r.pollCtx, r.pollCancel = context.WithCancel(r.recvCtx)
	r.pollMu.Unlock()
	r.runCtx, r.runCancel = context.WithCancel(context.Background())
	go r.loop()
	go r.heartbeat()
	go r.watch()
}

// closeUnrun closes the subscription of a runner that subscribed but never
// ran, which leased nothing, and leaves the runner as new.
func (r *runner) closeUnrun() {
	if r.sub == nil {
		return
	}
	if err := r.sub.Close(); err != nil {
		r.bus.log.Warn("ripple: closing the subscription failed", "handler", r.name, "err", err)
	}
	r.sub = nil
}

// stopReceiving stops leasing new deliveries; running handlers go on.
func (r *runner) stopReceiving() {
	if r.recvCancel != nil {
		r.recvCancel()
	}
}

// drained returns a channel closed once the receive loop and every
// handler have finished. The runner must have started.
func (r *runner) drained() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		<-r.loopDone
		r.handlers.Wait()
		close(done)
	}()
	return done
}

// close closes the subscription of a runner with nothing left to run.
func (r *runner) close() error {
	r.runCancel() // nothing left to heartbeat for
	return r.sub.Close()
}

// abort cancels running handlers and releases their deliveries without
// counting the attempt, so a shutdown does not burn retries.
func (r *runner) abort() {
	if r.sub == nil {
		return
	}
	r.closeAborted(r.cutOff())
}

// cutOff is the part of abort that makes no transport call, so that it
// cannot hang: it cancels running handlers and takes back every delivery
// the runner holds, returning the releases closeAborted is to settle.
// Once it returns, no handler starts.
func (r *runner) cutOff() []transport.Settlement {
	r.mu.Lock()
	r.aborted = true
	var pending []transport.Settlement
	for d, f := range r.inflight {
		if f != nil {
			f.ctx.cancel(context.Canceled)
			// The watch loop stops with runCtx, so a handler that ignores
			// the cancellation is abandoned from here.
			time.AfterFunc(abandonGrace, func() { r.abandon(f) })
		}
		pending = append(pending, transport.Settlement{Delivery: d, Outcome: transport.Release})
	}
	clear(r.inflight)
	r.mu.Unlock()
	r.runCancel()
	return pending
}

// closeAborted is the rest of abort: it waits (up to settleTimeout) for the
// outcomes handlers queued before the cut-off to be recorded, hands back
// the deliveries cutOff took and closes the subscription.
func (r *runner) closeAborted(pending []transport.Settlement) {
	if !r.awaitSettled(settleTimeout) {
		r.bus.log.Warn("ripple: outcomes of handled events were not recorded in time at shutdown; those events are delivered again after their lease",
			"handler", r.name)
	}
	if len(pending) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := r.sub.Settle(ctx, pending); err != nil {
			r.bus.log.Warn("ripple: could not release events at shutdown; they return after their lease",
				"handler", r.name, "events", len(pending), "err", err)
		}
		cancel()
	}
	if err := r.sub.Close(); err != nil {
		r.bus.log.Warn("ripple: closing the subscription failed", "handler", r.name, "err", err)
	}
}

func (r *runner) loop() {
	defer close(r.loopDone)
	// Only the loop hands out work: closing it ends the idle workers.
	defer close(r.work)
	failures := 0
	for {
		select {
		case r.slots <- struct{}{}:
		case <-r.recvCtx.Done():
			return
		}
		want := 1
		limited := r.limiter != nil || r.shared != nil
		if !limited {
			want += r.takeSlots(maxReceiveBatch - 1)
			if want == 1 {
				// One slot free: let the goroutines ready to run go first.
				// On a busy process they include this handler's, about to
				// free their slots, so that one Receive leases for several
				// of them instead of a wake-up and a Receive each. On an
				// idle one this returns at once.
				runtime.Gosched()
				want += r.takeSlots(maxReceiveBatch - 1)
			}
		}
		pctx := r.poll()
		ds, err := r.sub.Receive(pctx, want)
		for range want - len(ds) {
			<-r.slots
		}
		// Deliveries are leased even when an error comes with them, so
		// they are handled before the error is dealt with.
		if !limited {
			r.dispatch(ds)
		} else if rerr := r.dispatchLimited(ds); rerr != nil {
			if r.recvCtx.Err() != nil {
				return
			}
			r.bus.log.Error("ripple: rate limiter failed", "handler", r.name, "err", rerr)
			failures++
			r.sleep(failureBackoff(failures))
			continue
		}
		if err != nil {
			if r.recvCtx.Err() != nil {
				return
			}
			if pctx.Err() != nil {
				continue // interrupted by Pause: receive again
			}
			failures++
			r.bus.log.Error("ripple: receive failed; retrying", "handler", r.name, "transport", r.bus.driver.Name(), "err", err)
			r.sleep(failureBackoff(failures))
			continue
		}
		failures = 0
	}
}

// takeSlots takes up to n more free slots without waiting and returns how
// many it took.
func (r *runner) takeSlots(n int) int {
	for i := range n {
		select {
		case r.slots <- struct{}{}:
		default:
			return i
		}
	}
	return n
}

// poll returns the ctx for the next Receive.
func (r *runner) poll() context.Context {
	r.pollMu.Lock()
	defer r.pollMu.Unlock()
	return r.pollCtx
}

// interrupt ends the Receive under way, if any; the loop then receives
// again, which a paused subscription answers with nothing.
func (r *runner) interrupt() {
	r.pollMu.Lock()
	defer r.pollMu.Unlock()
	if r.pollCancel == nil || r.recvCtx.Err() != nil {
		return
	}
	r.pollCancel()
	r.pollCtx, r.pollCancel = context.WithCancel(r.recvCtx)
}

// dispatch hands received deliveries, whose slots are taken, to workers.
func (r *runner) dispatch(ds []*transport.Delivery) {
	if !r.track(ds) {
		return
	}
	for _, d := range ds {
		select {
		case r.work <- d:
		default:
			go r.worker(d)
		}
	}
}

// dispatchLimited is dispatch for a rate-limited handler: each delivery
// waits for its slot of the limit before it goes to a worker. The slot is
// taken only once a delivery is there to use it; taken before Receive, it
// would be spent on idle time and let one extra start through when events
// arrive. A delivery waiting here stays tracked, so its lease is renewed
// and abort releases it. When the wait fails, the deliveries not yet
// started are released and the error is returned.
func (r *runner) dispatchLimited(ds []*transport.Delivery) error {
	if !r.track(ds) {
		return nil
	}
	for i, d := range ds {
		if err := r.waitRate(); err != nil {
			for _, d := range ds[i:] {
				r.settle(d, transport.Settlement{Outcome: transport.Release}, nil)
			}
			return err
		}
		select {
		case r.work <- d:
		default:
			go r.worker(d)
		}
	}
	return nil
}

// track registers received deliveries, whose slots are taken, as in
// flight and counts them as running handlers. It reports false, having
// released them, when the runner was aborted.
func (r *runner) track(ds []*transport.Delivery) bool {
	if len(ds) == 0 {
		return false
	}
	r.mu.Lock()
	if r.aborted {
		// A Receive that returned after abort: its handler would run
		// unwatched, after Shutdown returned. The subscription may be
		// closed by now, in which case the deliveries return after their
		// lease.
		r.mu.Unlock()
		r.releaseLate(ds)
		return false
	}
	for _, d := range ds {
		r.inflight[d] = nil
	}
	r.mu.Unlock()
	r.handlers.Add(len(ds))
	r.busy.Add(int64(len(ds)))
	return true
}

// releaseLate hands back deliveries received after abort and frees their
// slots.
func (r *runner) releaseLate(ds []*transport.Delivery) {
	ss := make([]transport.Settlement, len(ds))
	for i, d := range ds {
		ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Release}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = r.sub.Settle(ctx, ss)
	cancel()
	for range ds {
		<-r.slots
	}
}

// worker runs deliveries one after another, starting with d, and waits
// for the next until the receive loop stops. Reusing goroutines spares each
// delivery a goroutine start and the stack growth of the handler path.
// The loop starts a worker only when none is waiting. A worker that has
// freed its slot but not yet come back for more can be passed over, so a
// worker that finds more than Concurrency alive when it comes back ends:
// there are at most Concurrency idle, plus any running an abandoned
// handler. They end once the receive loop has stopped.
func (r *runner) worker(d *transport.Delivery) {
	r.workers.Add(1)
	for ok := true; ok; d, ok = <-r.work {
		r.handle(d)
		if r.surplusWorker() {
			return
		}
	}
	r.workers.Add(-1)
}

// surplusWorker reports, and counts out, a worker beyond Concurrency.
func (r *runner) surplusWorker() bool {
	for {
		n := r.workers.Load()
		if n <= int64(r.cfg.concurrency) {
			return false
		}
		if r.workers.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func (r *runner) waitRate() error {
	if r.limiter != nil {
		r.sleep(r.limiter.reserve(time.Now()))
		return r.recvCtx.Err()
	}
	d, err := r.shared.Reserve(r.recvCtx, r.name, r.cfg.rateN, r.cfg.ratePer)
	if err != nil {
		return err
	}
	r.sleep(d)
	return r.recvCtx.Err()
}

// sleep waits d, or until the runner stops receiving. A d of zero or
// less returns at once, without a timer: a rate-limited handler sleeps
// before every event, most often for nothing.
func (r *runner) sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.recvCtx.Done():
	}
}

func failureBackoff(n int) time.Duration {
	d := 50 * time.Millisecond << min(n, 6)
	return min(d, 5*time.Second)
}

// heartbeat renews the leases of running handlers every third of a lease,
// until runCtx ends: once every handler has drained, or on abort.
func (r *runner) heartbeat() {
	t := time.NewTicker(r.cfg.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-r.runCtx.Done():
			return
		}
		r.mu.Lock()
		ds := make([]*transport.Delivery, 0, len(r.inflight))
		for d := range r.inflight {
			ds = append(ds, d)
		}
		r.mu.Unlock()
		if len(ds) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.lease/3)
		if err := r.sub.Extend(ctx, ds, r.cfg.lease); err != nil {
			r.bus.log.Warn("ripple: lease renewal failed; events may be delivered twice", "handler", r.name, "err", err)
		}
		cancel()
	}
}

// handle runs one delivery and settles it. The handler runs on this
// goroutine; a handler that ignores its cancelled ctx past abandonGrace is
// abandoned by the watch loop, which settles the attempt and frees the
// slot.
func (r *runner) handle(d *transport.Delivery) {
	evv := handlerEvent(d, r.name)
	ev := &evv

	// An idempotent handler's claim comes first: an event whose last
	// attempt succeeded but was never acknowledged is done, whatever its
	// attempt count.
	if r.claimer != nil {
		if s, skip := r.claim(ev); skip {
			r.settle(d, s, nil)
			return
		}
	} else if r.marks != nil && d.Attempt > 1 && r.markedDone(ev) {
		// A redelivery of an event the handler marked done with
		// CompleteTx: its transaction committed, and the process
		// crashed or the attempt failed after that.
		r.settle(d, transport.Settlement{Outcome: transport.Complete}, nil)
		return
	}

	if d.Attempt > r.cfg.maxAttempts+1 {
		// Earlier deliveries used up the budget, and one delivery more,
		// without a result: their processes crashed or hung until the
		// lease ran out. The one more is so that a single crash never
		// costs an event its run, even with MaxAttempts(1); past it,
		// running the event again could crash this process too, so it
		// is dead-lettered instead.
		if r.claimer != nil {
			r.finishClaim(ev, false)
		}
		err := fmt.Errorf("attempts used up: %d earlier deliveries ended without a result (the process handling each crashed, hung or lost its lease), so it was not run again", d.Attempt-1)
		r.finish(d, ev, err, true, 0)
		return
	}

	start := time.Now()
	f := &flight{d: d}
	f.ctx = handlerCtx{d: d, handler: r.name, deadline: start.Add(r.cfg.timeout), values: r.values}
	r.mu.Lock()
	if _, mine := r.inflight[d]; !mine {
		// abort released the delivery before the handler started: its
		// claim goes too, or the redelivery would wait for it to expire.
		r.mu.Unlock()
		if r.claimer != nil {
			r.finishClaim(ev, false)
		}
		r.free()
		return
	}
	r.inflight[d] = f
	r.mu.Unlock()
	err := r.call(&f.ctx, ev)
	timedOut := f.ctx.Err() == context.DeadlineExceeded
	f.ctx.cancel(context.Canceled) // ends contexts the handler derived
	if !f.state.CompareAndSwap(0, 1) {
		// Abandoned: the attempt was settled as failed, and its claim is
		// still held (see claimTTL). A late success is recorded, so that
		// the retry waiting on the claim finds the event done. A late
		// failure gives the claim up so that the retry may run at once,
		// but only well before the claim expires: after that another
		// attempt may hold it, and giving it up would let a third run
		// beside that one.
		if r.claimer != nil && (err == nil || time.Since(start)+claimMargin < r.claimTTL()) {
			r.finishClaim(ev, err == nil)
		}
		return
	}
	if err != nil && timedOut && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("handler timed out after %s: %w", r.cfg.timeout, err)
	}
	var elapsed time.Duration
	if len(r.bus.handleHooks) > 0 {
		// Only the hooks are told how long the handler ran: without them
		// a clock read per delivery is spared.
		elapsed = time.Since(start)
	}
	r.finish(d, ev, err, false, elapsed)
}

// free ends a delivery whose outcome is not to be recorded: it frees the
// slot and stops counting the delivery as running.
func (r *runner) free() {
	<-r.slots
	r.busy.Add(-1)
	r.handlers.Done()
}

// claim takes the idempotency claim. skip is true when the handler must
// not run, with the settlement to record instead.
func (r *runner) claim(ev *Event) (s transport.Settlement, skip bool) {
	res, err := r.claimer.Claim(r.runCtx, r.name, transport.IdentityKey(ev.Source, ev.ID), r.claimTTL())
	switch {
	case err != nil:
		r.bus.log.Warn("ripple: idempotency claim failed; event released", "handler", r.name, "event", ev.ID, "err", err)
		return transport.Settlement{Outcome: transport.Release, Delay: time.Second}, true
	case res == transport.Done:
		return transport.Settlement{Outcome: transport.Complete}, true
	case res == transport.Busy:
		return transport.Settlement{Outcome: transport.Release, Delay: min(r.cfg.timeout, time.Second)}, true
	}
	return s, false
}

// markedDone reports whether the handler marked ev done with CompleteTx.
// When that cannot be learnt the handler runs: its CompleteTx still
// refuses a second commit.
func (r *runner) markedDone(ev *Event) bool {
	done, err := r.marks.Done(r.runCtx, r.name, transport.IdentityKey(ev.Source, ev.ID))
	if err != nil {
		r.bus.log.Warn("ripple: could not read the event's done mark; running the handler", "handler", r.name, "event", ev.ID, "err", err)
		return false
	}
	return done
}

// claimMargin is how long before its claim expires an abandoned attempt
// stops giving the claim up on a late failure: more than the time a
// Finish call takes to reach the transport.
const claimMargin = 2 * time.Second

// claimTTL is how long an idempotency claim holds before another attempt
// may take it. It outlasts the attempt's abandonment (timeout, grace and
// the watch loop's tick) by as long again, so that a handler that ignored
// its cancelled ctx but returns within that time still decides the
// outcome, while the retry waits on the claim instead of running beside
// it. A handler stuck for longer gives way to the retry.
func (r *runner) claimTTL() time.Duration {
	return 2 * (r.cfg.timeout + abandonGrace + watchTick(r.cfg.timeout))
}

// finishClaim records an attempt's outcome on its idempotency claim.
func (r *runner) finishClaim(ev *Event, success bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.claimer.Finish(ctx, r.name, transport.IdentityKey(ev.Source, ev.ID), success); err != nil {
		r.bus.log.Warn("ripple: could not record idempotency claim", "handler", r.name, "event", ev.ID, "err", err)
	}
}

// call runs the handler inside its middleware, turning a panic in either
// into an error.
func (r *runner) call(ctx context.Context, ev *Event) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.bus.log.Error("ripple: handler panicked", "handler", r.name, "event", ev.ID, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return r.wrapped(ctx, *ev)
}

// finish queues the attempt's outcome for the settler, which records it,
// tells the hooks and frees the slot.
func (r *runner) finish(d *transport.Delivery, ev *Event, err error, abandoned bool, elapsed time.Duration) {
	if r.claimer != nil && !abandoned {
		r.finishClaim(ev, err == nil)
	}
	s := transport.Settlement{Outcome: transport.Complete}
	outcome := OutcomeSuccess
	if err != nil {
		if r.isAborted() {
			// Stopped by shutdown, not by a failure: hand the event back.
			r.settle(d, transport.Settlement{Outcome: transport.Release}, nil)
			return
		}
		s.Error = err.Error()
		switch {
		case IsPermanent(err):
			// The handler decided: an expected outcome, not a fault.
			s.Outcome, outcome = transport.Dead, OutcomeDead
			r.bus.log.Warn("ripple: event dead-lettered: the handler returned a permanent error", "handler", r.name, "event", ev.ID, "type", ev.Type,
				"attempt", d.Attempt, "err", err)
		case d.Attempt >= r.cfg.maxAttempts:
			s.Outcome, outcome = transport.Dead, OutcomeDead
			r.bus.log.Error("ripple: event dead-lettered: attempts used up", "handler", r.name, "event", ev.ID, "type", ev.Type,
				"attempt", d.Attempt, "err", err)
		default:
			s.Outcome, outcome = transport.Retry, OutcomeRetry
			if delay, ok := retryDelay(err); ok {
				s.Delay = delay
			} else {
				s.Delay = backoff(d.Attempt, r.cfg.backoffMin, r.cfg.backoffMax)
			}
			r.bus.log.Warn("ripple: handler failed; will retry", "handler", r.name, "event", ev.ID, "type", ev.Type,
				"attempt", d.Attempt, "retry_in", s.Delay, "err", err)
		}
	}
	// The hooks hear of the outcome once the store holds it: not when a
	// shutdown took the delivery back first (it is delivered again), nor
	// when the transport fails to record it.
	res := queuedOutcome{outcome: outcome, err: err, elapsed: elapsed}
	if len(r.bus.handleHooks) > 0 {
		// Only the hooks are told of the event: without them it stays
		// on the handling goroutine's stack.
		kept := *ev
		res.ev = &kept
		res.latency = time.Since(ev.Time)
	}
	r.settle(d, s, &res)
}

func (r *runner) isAborted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.aborted
}

// settleTimeout bounds one settlement.
const settleTimeout = 10 * time.Second

// A sharedDeadline is a context with a deadline that many calls share.
type sharedDeadline struct {
	ctx context.Context
	// cancel is never called: the deadline releases the context, and an
	// early call would cut off settlements still using it.
	cancel   context.CancelFunc
	deadline time.Time
}

// settleCtx returns a context ending 90 to 100% of settleTimeout from
// now. Settlements share it, one per tenth of settleTimeout, instead of
// each paying for a timer of its own.
func (r *runner) settleCtx() context.Context {
	now := time.Now()
	if c := r.settleDeadline.Load(); c != nil && c.deadline.Sub(now) > settleTimeout*9/10 {
		return c.ctx
	}
	c := &sharedDeadline{deadline: now.Add(settleTimeout)}
	c.ctx, c.cancel = context.WithDeadline(context.Background(), c.deadline)
	r.settleDeadline.Store(c)
	return c.ctx
}

// backoff returns the wait before attempt+1: min doubled per failed
// attempt, capped at max, with ±20% jitter so mass failures spread out.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	jitter := time.Duration(float64(d) * (rand.Float64()*0.4 - 0.2))
	return max(d+jitter, 0)
}

// ---- context ----

type eventKey struct{}

func eventFromContext(ctx context.Context) *Event {
	e, _ := ctx.Value(eventKey{}).(*Event)
	return e
}

// parentEvent returns, when ctx is (or derives from) a handler's context,
// the id, correlation id and trace context of the event being handled.
func parentEvent(ctx context.Context) (id, correlationID, traceParent string, ok bool) {
	c, _ := ctx.Value(handlerCtxKey{}).(*handlerCtx)
	if c == nil {
		return "", "", "", false
	}
	id, correlationID, traceParent = c.parent()
	return id, correlationID, traceParent, true
}

// EventFromContext returns the event being handled, when ctx is (or
// derives from) a handler's context.
func EventFromContext(ctx context.Context) (Event, bool) {
	if e := eventFromContext(ctx); e != nil {
		return *e, true
	}
	return Event{}, false
}

// ---- hooks ----

// Outcome is how one handler attempt ended.
type Outcome string

// Attempt outcomes, as used in the ripple_handler_events_total metric.
const (
	OutcomeSuccess Outcome = "success"
	OutcomeRetry   Outcome = "retry"
	OutcomeDead    Outcome = "dead"
)

// HandleResult describes one finished handler attempt.
type HandleResult struct {
	Handler  string
	Event    Event
	Outcome  Outcome
	Err      error
	Duration time.Duration // time spent in the handler
	Latency  time.Duration // from the event's Time (its publish unless set with WithEventTime) to the end of this attempt
}

// PublishHook observes publishes. err is nil for a stored event.
type PublishHook interface {
	OnPublish(ctx context.Context, e Event, err error)
}

// HandleHook observes finished handler attempts whose outcome the
// transport recorded. An attempt that Shutdown or Unsubscribe cut off, and
// whose event was handed back for redelivery, is not reported, whatever
// the handler returned afterwards; nor is one whose outcome the transport
// failed to record (it is delivered again). OnHandle runs once the
// outcome is recorded, on the goroutine that records the handler's
// outcomes, so it must be quick: a slow hook holds back the recording of
// the handler's next outcomes.
type HandleHook interface {
	OnHandle(res HandleResult)
}

// ---- typed handlers ----

// Handle registers a handler whose payload is decoded into T before fn
// runs. A payload that does not decode goes to the dead-letter queue
// without retries, since no retry can fix it.
func Handle[T any](b *Bus, pattern, name string, fn func(ctx context.Context, data T, e Event) error, opts ...HandlerOption) error {
	if fn == nil {
		return invalidOption("Handle(%q, %q): handler func is nil", pattern, name)
	}
	return b.On(pattern, name, func(ctx context.Context, e Event) error {
		var v T
		if err := e.Decode(&v); err != nil {
			return Permanent(err)
		}
		return fn(ctx, v, e)
	}, opts...)
}
