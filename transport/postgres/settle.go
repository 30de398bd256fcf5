package postgres

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// settleSQL records a batch of settlements, of any subscriptions and
// outcomes, in one statement. Each row matches its delivery only while
// the lease it settles is current (same gen, still leased), so a
// settlement from an expired lease that another receiver took over
// changes nothing. Outcomes are transport.Outcome: 1 Complete, 2 Retry,
// 3 Release, 4 Dead. The statement's transaction commits with
// synchronous_commit=off: an outcome lost to a server crash only means
// the event is delivered again (at-least-once), so it does not wait for a
// WAL flush; idempotency claims, which decide exactly-once effects, do.
const settleSQL = `WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
UPDATE @.deliveries d SET
	state = CASE k.outcome WHEN 1 THEN 2 WHEN 4 THEN 3 ELSE 0 END,
	done_at = CASE WHEN k.outcome IN (1, 4) THEN @.now_ns() ELSE d.done_at END,
	run_at = CASE WHEN k.outcome IN (2, 3) THEN @.after_ns(k.delay) ELSE d.run_at END,
	delayed = CASE WHEN k.outcome IN (2, 3) THEN k.delay > 0 ELSE d.delayed END,
	lease_until = 0,
	failures = CASE WHEN k.outcome IN (2, 4) THEN d.failures + 1 ELSE d.failures END,
	last_error = CASE WHEN k.outcome IN (2, 4) THEN k.err ELSE d.last_error END,
	attempts = CASE WHEN k.outcome = 3 THEN greatest(d.attempts - 1, 0) ELSE d.attempts END
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::smallint[], $5::bigint[], $6::text[]) AS k(sub, seq, gen, outcome, delay, err), relaxed
WHERE d.sub_id = k.sub AND d.event_seq = k.seq AND d.gen = k.gen AND d.state = 1`

// settleRow is one settlement of a settleOp.
type settleRow struct {
	tok     token
	outcome int16
	delay   int64
	err     string
}

// settleOp is one Settle call.
type settleOp struct {
	sub  *subscription
	rows []settleRow
	wake bool // the subscription's receivers must look again
	err  error
	done chan struct{}
}

// settler groups concurrent Settle calls: a call finding no statement
// under way runs its own; calls arriving meanwhile queue, and when the
// statement under way is done one goroutine takes every queued call into
// a single statement (one round trip, one commit), and so on until none is
// queued. Handlers that finish together, as the events of one lease do,
// so settle in a few statements rather than one each.
type settler struct {
	d *driver

	mu      sync.Mutex
	running bool
	queue   []*settleOp
}

// run settles op, alone or with others, and waits for its outcome or
// ctx's end.
func (g *settler) run(ctx context.Context, op *settleOp) error {
	g.mu.Lock()
	if g.running {
		g.queue = append(g.queue, op)
		g.mu.Unlock()
		select {
		case <-op.done:
			return op.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	g.running = true
	g.mu.Unlock()
	g.exec(ctx, []*settleOp{op})
	if batch := g.next(); batch != nil {
		go g.drain(batch)
	}
	return op.err
}

// next takes the queued calls, or ends the run when there are none.
func (g *settler) next() []*settleOp {
	g.mu.Lock()
	defer g.mu.Unlock()
	batch := g.queue
	g.queue = nil
	if len(batch) == 0 {
		g.running = false
		return nil
	}
	return batch
}

// drain settles queued calls, a batch per statement, until none is left.
// Queued calls have contexts of their own, so a batch's statement is
// bound to none of them.
func (g *settler) drain(batch []*settleOp) {
	for batch != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		g.exec(ctx, batch)
		cancel()
		batch = g.next()
	}
}

// exec runs one statement for the settlements of batch and answers each
// of its calls.
func (g *settler) exec(ctx context.Context, batch []*settleOp) {
	d := g.d
	n := 0
	for _, op := range batch {
		n += len(op.rows)
	}
	subs, seqs, gens, delays := make([]int64, 0, n), make([]int64, 0, n), make([]int64, 0, n), make([]int64, 0, n)
	outcomes, errs := make([]int16, 0, n), make([]string, 0, n)
	for _, op := range batch {
		for _, r := range op.rows {
			subs, seqs, gens = append(subs, r.tok.sub), append(seqs, r.tok.seq), append(gens, r.tok.gen)
			outcomes, delays, errs = append(outcomes, r.outcome), append(delays, r.delay), append(errs, r.err)
		}
	}
	// A settlement is idempotent (it matches its lease generation), so one
	// sent on a connection that turned out dead is sent again.
	var err error
	for attempt := 0; ; attempt++ {
		_, err = d.pool.Exec(ctx, d.q(settleSQL), subs, seqs, gens, outcomes, delays, errs)
		if err == nil || !(pgconn.SafeToRetry(err) || serverTerminated(err)) || attempt >= 5 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 20 * time.Millisecond)
	}
	if err != nil {
		err = d.wrap(err)
	}
	var woken []int64
	for _, op := range batch {
		op.err = err
		if err == nil && op.wake {
			d.wake.Fire(op.sub.id)
			woken = append(woken, op.sub.id)
		}
		close(op.done)
	}
	if len(woken) > 0 {
		d.notifier.add(woken)
	}
}
