package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ripplehq/ripple/internal/wake"
	"github.com/ripplehq/ripple/transport"
)

// Subscribe implements transport.Driver. The subscription row is created
// (or its pattern, ordering and lease updated) before it returns; a new
// subscription with a From gets every retained matching event published
// at or after From, in the same transaction.
func (d *driver) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if spec.Name == "" {
		return nil, errors.New("postgres transport: subscription has no name")
	}
	if spec.Pattern == "" {
		return nil, fmt.Errorf("postgres transport: subscription %q has no pattern", spec.Name)
	}
	if spec.Lease <= 0 {
		spec.Lease = defaultLease
	}
	var id int64
	var conflict error
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if !spec.Ephemeral {
			// An ephemeral subscription of this name whose process died
			// (the pruner's test) gives way to the durable one.
			if _, err := tx.Exec(ctx, d.q(`WITH gone AS (
					DELETE FROM @.subscriptions WHERE name = $1 AND ephemeral AND touched_at < @.now_ns() - 3 * greatest(lease_ns, 1000000000) RETURNING id)
				DELETE FROM @.deliveries WHERE sub_id IN (SELECT id FROM gone)`), spec.Name); err != nil {
				return err
			}
		}
		// The upsert only updates a subscription of the same kind: a
		// durable subscription is never taken over by an ephemeral one
		// (which would delete it when it closes), nor a live ephemeral
		// one by a durable one.
		var inserted bool
		err := tx.QueryRow(ctx, d.q(`INSERT INTO @.subscriptions (name, pattern, regex, ordered, lease_ns, ephemeral, touched_at, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, @.now_ns(), @.now_ns())
			ON CONFLICT (name) DO UPDATE SET pattern = excluded.pattern, regex = excluded.regex, ordered = excluded.ordered,
				lease_ns = excluded.lease_ns, touched_at = excluded.touched_at
			WHERE @.subscriptions.ephemeral = excluded.ephemeral
			RETURNING id, xmax = 0`),
			spec.Name, spec.Pattern, patternRegex(spec.Pattern), spec.Ordered, int64(spec.Lease), spec.Ephemeral).Scan(&id, &inserted)
		if errors.Is(err, pgx.ErrNoRows) {
			if spec.Ephemeral {
				conflict = fmt.Errorf("postgres transport: handler %q is durable; give the ephemeral subscription a name of its own", spec.Name)
			} else {
				conflict = fmt.Errorf("postgres transport: handler %q is an ephemeral subscription in use; give the durable handler a name of its own (or wait for the ephemeral one to close)", spec.Name)
			}
			return conflict
		}
		if err != nil {
			return err
		}
		if inserted && !spec.From.IsZero() {
			// The history lock keeps the pruner from deleting an event
			// between this read and the delivery that refers to it.
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, -1)", d.lockKey); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, d.q(`INSERT INTO @.deliveries (sub_id, event_seq, state, run_at, priority, key)
				SELECT s.id, e.seq, 0, @.now_ns(), e.priority, CASE WHEN s.ordered THEN e.key ELSE '' END
				FROM @.events e JOIN @.subscriptions s ON s.id = $1 AND e.type ~ s.regex
				WHERE e.published_at >= $2 ORDER BY e.seq`), id, sinceNanos(spec.From)); err != nil {
				return err
			}
		}
		return nil
	})
	if conflict != nil {
		return nil, conflict
	}
	if err != nil {
		return nil, d.wrap(fmt.Errorf("subscribing %q: %w", spec.Name, err))
	}
	if spec.Ephemeral {
		d.nmu.Lock()
		d.receivers[spec.Name]++
		d.nmu.Unlock()
	}
	return &subscription{d: d, id: id, spec: spec, n: d.wake.For(id), closed: make(chan struct{})}, nil
}

// subscription implements transport.Subscription.
type subscription struct {
	d    *driver
	id   int64
	spec transport.SubscriptionSpec
	n    *wake.Signal

	once   sync.Once
	closed chan struct{}

	// quietWake and quietUntil: see setQuiet.
	qmu        sync.Mutex
	quietWake  <-chan struct{}
	quietUntil time.Time
}

// token identifies one lease of one delivery row: gen changes at every
// lease, so a settlement from a lease that expired and was taken over
// matches no row and is ignored.
type token struct {
	sub, seq, gen int64
}

func (s *subscription) check() error {
	select {
	case <-s.closed:
		return fmt.Errorf("%w: subscription %q", ErrClosed, s.spec.Name)
	case <-s.d.closing:
		return s.d.errClosed()
	default:
	}
	return nil
}

// Receive implements transport.Subscription. Between looks it sleeps until
// a notification names the subscription (a publish or settlement in any
// process), a delay or lease runs out, or the safety poll interval passes.
func (s *subscription) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	if max <= 0 {
		max = 1
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if err := s.check(); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		wake := s.n.Wait()
		if wait, ok := s.stillQuiet(wake); ok {
			// The last lease left nothing deliverable and nothing was
			// published or settled since: sleep without asking.
			if !s.sleep(ctx, timer, wake, wait) {
				continue
			}
			return nil, ctx.Err()
		}
		out, wait, err := s.lease(ctx, max)
		if len(out) > 0 && (ctx.Err() != nil || s.check() != nil) {
			// The caller left while the lease was being taken: hand the
			// rows back without using an attempt, so a receiver that
			// stops never costs its events an attempt.
			s.release(out)
			out = nil
			if err = ctx.Err(); err == nil {
				err = s.check()
			}
			return nil, err
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if s.check() != nil {
				return nil, s.check()
			}
			return nil, s.d.wrap(err)
		}
		if len(out) > 0 {
			s.setQuiet(wake, wait)
			return out, nil
		}
		if s.sleep(ctx, timer, wake, wait) {
			return nil, ctx.Err()
		}
	}
}

// sleep waits for a wake-up, wait, or the end of ctx or of the
// subscription; it reports whether ctx ended.
func (s *subscription) sleep(ctx context.Context, timer *time.Timer, wake <-chan struct{}, wait time.Duration) bool {
	timer.Reset(wait)
	defer func() {
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}()
	select {
	case <-wake:
	case <-timer.C:
	case <-ctx.Done():
		return true
	case <-s.closed:
	case <-s.d.closing:
	}
	return false
}

// setQuiet records that the lease taken after wake was drawn left nothing
// deliverable for wait (wait > 0: the lease returned fewer rows than asked
// and said when the next row becomes deliverable), so that the next
// Receive sleeps instead of asking again, until wake fires or wait passes.
func (s *subscription) setQuiet(wake <-chan struct{}, wait time.Duration) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if wait <= 0 {
		s.quietWake = nil
		return
	}
	s.quietWake, s.quietUntil = wake, time.Now().Add(wait)
}

// stillQuiet reports how long nothing can become deliverable, when the
// last lease left nothing and wake has not fired since.
func (s *subscription) stillQuiet(wake <-chan struct{}) (time.Duration, bool) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.quietWake == nil || s.quietWake != wake {
		s.quietWake = nil
		return 0, false
	}
	left := time.Until(s.quietUntil)
	if left <= 0 {
		s.quietWake = nil
		return 0, false
	}
	return left, true
}

// lease leases up to max deliveries, or returns how long to wait before
// looking again.
func (s *subscription) lease(ctx context.Context, limit int) ([]*transport.Delivery, time.Duration, error) {
	// The lease runs to its end even when ctx ends meanwhile (Receive
	// then hands the rows back): a statement cancelled in flight may have
	// committed, and rows leased for nobody would wait out their lease and
	// come back with an attempt used.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	rows, err := s.d.pool.Query(lctx, s.d.q(`SELECT * FROM @.lease($1, $2, $3)`), s.id, int32(limit), int64(s.spec.Lease))
	if err != nil {
		return nil, 0, err
	}
	var out []*transport.Delivery
	var now int64
	var next *int64
	for rows.Next() {
		var (
			seq, gen, t    int64
			first          *int64
			attempts, prio int32
			id, typ, key   *string
			attrs          []byte
			dl             = &transport.Delivery{}
		)
		if err := rows.Scan(&seq, &attempts, &gen, &first, &id, &typ, &key, &prio, &t, &attrs, &dl.Data); err != nil {
			rows.Close()
			return nil, 0, err
		}
		if seq < 0 {
			now, next = gen, first
			continue
		}
		dl.ID, dl.Type, dl.Key = *id, *typ, *key
		dl.Attempt, dl.Priority, dl.Time = int(attempts), int(prio), fromNanos(t)
		if first != nil {
			dl.FirstDelivered = fromNanos(*first)
		}
		dl.Attrs = decodeAttrs(attrs)
		dl.Token = token{sub: s.id, seq: seq, gen: gen}
		out = append(out, dl)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	// The row with seq -1 comes when fewer rows than asked for were
	// leased: it says when to look again.
	wait := time.Duration(0)
	if now != 0 {
		wait = safetyPoll
		if next != nil {
			wait = min(wait, max(time.Duration(*next-now), time.Millisecond))
		}
	} else if len(out) == 0 {
		wait = safetyPoll // a paused subscription
	}
	sortDeliveries(out)
	return out, wait, nil
}

func sortDeliveries(ds []*transport.Delivery) {
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && deliveryLess(ds[j], ds[j-1]); j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
}

func deliveryLess(a, b *transport.Delivery) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.Token.(token).seq < b.Token.(token).seq
}

func tokenOf(d *transport.Delivery) (token, error) {
	if d == nil {
		return token{}, errors.New("postgres transport: settlement without a delivery")
	}
	t, ok := d.Token.(token)
	if !ok {
		return token{}, fmt.Errorf("postgres transport: delivery token %T was not issued by this driver", d.Token)
	}
	return t, nil
}

// Settle implements transport.Subscription: every settlement in one round
// trip (one implicit transaction).
func (s *subscription) Settle(ctx context.Context, ss []transport.Settlement) error {
	if len(ss) == 0 {
		return nil
	}
	if err := s.d.checkOpen(); err != nil {
		return err
	}
	return s.settle(ctx, ss)
}

func (s *subscription) settle(ctx context.Context, ss []transport.Settlement) error {
	op := &settleOp{sub: s, done: make(chan struct{})}
	for i := range ss {
		st := &ss[i]
		t, err := tokenOf(st.Delivery)
		if err != nil {
			return err
		}
		switch st.Outcome {
		case transport.Complete, transport.Dead:
			op.wake = op.wake || s.spec.Ordered
		case transport.Retry, transport.Release:
			op.wake = true
		default:
			return fmt.Errorf("postgres transport: unknown settlement outcome %d", int(st.Outcome))
		}
		op.rows = append(op.rows, settleRow{tok: t, outcome: int16(st.Outcome), delay: int64(max(st.Delay, 0)), err: st.Error})
	}
	return s.d.settles.run(ctx, op)
}

// release hands leased rows back, undoing their attempt.
func (s *subscription) release(ds []*transport.Delivery) {
	ss := make([]transport.Settlement, len(ds))
	for i, dl := range ds {
		ss[i] = transport.Settlement{Delivery: dl, Outcome: transport.Release}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.settle(ctx, ss); err != nil {
		s.d.log.Warn("postgres transport: could not hand back events leased for a receiver that left; they return after their lease",
			"handler", s.spec.Name, "events", len(ds), "err", err)
	}
}

// Extend implements transport.Subscription.
func (s *subscription) Extend(ctx context.Context, ds []*transport.Delivery, lease time.Duration) error {
	if len(ds) == 0 {
		return nil
	}
	if err := s.d.checkOpen(); err != nil {
		return err
	}
	if lease <= 0 {
		lease = s.spec.Lease
	}
	seqs, gens := make([]int64, 0, len(ds)), make([]int64, 0, len(ds))
	for _, dl := range ds {
		t, err := tokenOf(dl)
		if err != nil {
			return err
		}
		seqs, gens = append(seqs, t.seq), append(gens, t.gen)
	}
	_, err := s.d.pool.Exec(ctx, s.d.q(`WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
		UPDATE @.deliveries d SET lease_until = @.after_ns($2)
		FROM unnest($3::bigint[], $4::bigint[]) AS k(seq, gen), relaxed
		WHERE d.sub_id = $1 AND d.event_seq = k.seq AND d.gen = k.gen AND d.state = 1`), s.id, int64(lease), seqs, gens)
	return s.d.wrap(err)
}

// Close implements transport.Subscription. It wakes blocked Receive calls.
// The durable subscription stays, unless it is ephemeral and this was the
// process's last receiver of it: then it is deleted with everything queued
// for it.
func (s *subscription) Close() error {
	first := false
	s.once.Do(func() { close(s.closed); first = true })
	s.n.Fire()
	if !first || !s.spec.Ephemeral {
		return nil
	}
	s.d.nmu.Lock()
	s.d.receivers[s.spec.Name]--
	last := s.d.receivers[s.spec.Name] <= 0
	if last {
		delete(s.d.receivers, s.spec.Name)
	}
	s.d.nmu.Unlock()
	if !last || s.d.checkOpen() != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.d.deleteSub(ctx, s.id); err != nil {
		return s.d.wrap(fmt.Errorf("deleting ephemeral subscription %q: %w", s.spec.Name, err))
	}
	return nil
}

// deleteSub deletes a subscription with its deliveries.
func (d *driver) deleteSub(ctx context.Context, id int64) error {
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, d.q(`DELETE FROM @.deliveries WHERE sub_id = $1`), id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, d.q(`DELETE FROM @.subscriptions WHERE id = $1`), id)
		return err
	})
}
