package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ripplehq/ripple/internal/wake"
	"github.com/ripplehq/ripple/transport"
)

// Publish implements transport.Driver. It returns once the transaction
// holding the messages has committed (and, with synchronous=full, reached
// stable storage). If ctx ends first it returns ctx.Err(); the messages may
// still have been stored, which publish deduplication makes harmless to
// retry.
func (d *driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	return d.execOp(ctx, &op{ctx: ctx, msgs: msgs}, returnOnCancel)
}

// Subscribe implements transport.Driver. The subscription row is created
// (or its pattern, ordering and lease updated) durably before it returns.
func (d *driver) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	if spec.Name == "" {
		return nil, errors.New("sqlite transport: subscription has no name")
	}
	if spec.Pattern == "" {
		return nil, fmt.Errorf("sqlite transport: subscription %q has no pattern", spec.Name)
	}
	if spec.Lease <= 0 {
		spec.Lease = defaultLease
	}
	var id int64
	err := d.exec(ctx, func(w *writer) error {
		var err error
		id, err = w.subscribe(spec)
		return err
	}, returnOnCancel)
	if err != nil {
		return nil, err
	}
	if spec.Ephemeral {
		d.ephemeralRef(id, 1)
	}
	return &subscription{d: d, id: id, spec: spec, n: d.wake.For(id), closed: make(chan struct{})}, nil
}

func (w *writer) subscribe(spec transport.SubscriptionSpec) (int64, error) {
	bg := context.Background()
	var (
		id        int64
		pattern   string
		ordered   bool
		lease     int64
		ephemeral bool
	)
	err := w.conn.QueryRowContext(bg, `SELECT id, pattern, ordered, lease_ns, ephemeral FROM subscriptions WHERE name = ?`, spec.Name).
		Scan(&id, &pattern, &ordered, &lease, &ephemeral)
	if err == nil && ephemeral != spec.Ephemeral {
		kind := map[bool]string{true: "an ephemeral", false: "a durable"}
		return 0, fmt.Errorf("sqlite transport: handler %q exists as %s subscription and cannot be reopened as %s one; give it another name",
			spec.Name, kind[ephemeral], kind[spec.Ephemeral])
	}
	if err == nil && ephemeral {
		if _, err := w.conn.ExecContext(bg, `UPDATE subscriptions SET touched_at = ? WHERE id = ?`, w.now, id); err != nil {
			return 0, err
		}
	}
	switch {
	case errors.Is(err, sql.ErrNoRows):
		// Ids are never reused: a receiver of an unsubscribed handler,
		// in another process, still leases by its id, which must not come
		// to mean another handler. ripple_meta's last_sub_id keeps the
		// highest id ever given, as the row with it may be gone.
		// head starts at the newest event: the subscription sees what is
		// published after it, and nothing before (unless From says so).
		res, err := w.conn.ExecContext(bg, `INSERT INTO subscriptions (id, name, pattern, ordered, lease_ns, created_at, ephemeral, touched_at, head)
			VALUES (max(coalesce((SELECT value FROM ripple_meta WHERE key = 'last_sub_id'), 0),
				coalesce((SELECT max(id) FROM subscriptions), 0)) + 1, ?, ?, ?, ?, ?, ?, ?,
				(SELECT coalesce(max(seq), 0) FROM events))`,
			spec.Name, spec.Pattern, spec.Ordered, int64(spec.Lease), w.now, spec.Ephemeral, w.now)
		if err != nil {
			return 0, err
		}
		if id, err = res.LastInsertId(); err != nil {
			return 0, err
		}
		if _, err := w.conn.ExecContext(bg, `INSERT INTO ripple_meta (key, value) VALUES ('last_sub_id', ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, id); err != nil {
			return 0, err
		}
		switch {
		case spec.From.IsZero():
		case spec.Ordered:
			// Start from history: the retained events of the pattern
			// published at or after From, in this same transaction, so
			// none published meanwhile is missed or doubled. An ordered
			// subscription reads rows, so it gets one per event.
			if _, err := w.backfill(subInfo{id: id, pattern: spec.Pattern, ordered: spec.Ordered}, spec.From); err != nil {
				return 0, err
			}
		default:
			// An unordered one reads the log: its head moves back.
			if err := w.startFromLog(id, spec.Pattern, spec.From); err != nil {
				return 0, err
			}
		}
	case err != nil:
		return 0, err
	case pattern == spec.Pattern && ordered == spec.Ordered && lease == int64(spec.Lease):
		return id, nil
	default:
		if _, err := w.conn.ExecContext(bg, `UPDATE subscriptions SET pattern = ?, ordered = ?, lease_ns = ? WHERE id = ?`,
			spec.Pattern, spec.Ordered, int64(spec.Lease), id); err != nil {
			return 0, err
		}
		if ordered != spec.Ordered {
			if err := w.switchOrdered(id, spec); err != nil {
				return 0, err
			}
		}
	}
	if _, err := w.conn.ExecContext(bg, `UPDATE ripple_meta SET value = value + 1 WHERE key = 'subs_version'`); err != nil {
		return 0, err
	}
	// Reload the list at the next publish, in this transaction or later.
	w.subsChecked = false
	w.subsVersion = -1
	return id, nil
}

// subscription implements transport.Subscription.
type subscription struct {
	d    *driver
	id   int64
	spec transport.SubscriptionSpec
	n    *wake.Signal

	once   sync.Once
	closed chan struct{}
}

func (s *subscription) check() error {
	select {
	case <-s.closed:
		return fmt.Errorf("%w: subscription %q", ErrClosed, s.spec.Name)
	default:
	}
	return nil
}

// Receive implements transport.Subscription. It sleeps without polling the
// database: a local publish or settlement wakes it at once, another
// process's commit within the poll interval, and a delay or lease that
// runs out at its time.
func (s *subscription) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	if max <= 0 {
		max = 1
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if err := s.check(); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Take the wake-up channel before looking, so a publish that
		// commits between the look and the wait is not missed.
		wake := s.n.Wait()
		var (
			out  []*transport.Delivery
			next int64
		)
		err := s.d.exec(ctx, func(w *writer) error {
			var err error
			out, next, err = w.receive(s, max)
			return err
		}, soft)
		if errors.Is(err, errLeaseAgain) {
			continue
		}
		if ue := (*unreadableError)(nil); errors.As(err, &ue) {
			if err := s.d.deadUnreadable(ctx, ue); err != nil {
				return nil, s.d.wrap(err)
			}
			continue
		}
		if ue := (*unreadableLogError)(nil); errors.As(err, &ue) {
			if err := s.d.skipUnreadableLog(ctx, ue); err != nil {
				return nil, s.d.wrap(err)
			}
			continue
		}
		if err != nil {
			return nil, s.d.storageErr(err)
		}
		if len(out) > 0 {
			return out, nil
		}
		if s.spec.Ephemeral {
			// Touch the subscription while waiting, so that no other
			// process takes it for abandoned.
			beat := time.Now().Add(s.spec.Lease / 2).UnixNano()
			if next == 0 || next > beat {
				next = beat
			}
		}
		var timerC <-chan time.Time
		if next > 0 {
			dur := time.Until(time.Unix(0, next))
			if dur < time.Millisecond {
				dur = time.Millisecond
			}
			if timer == nil {
				timer = time.NewTimer(dur)
			} else {
				timer.Reset(dur)
			}
			timerC = timer.C
		}
		select {
		case <-wake:
		case <-timerC:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closed:
		case <-s.d.closing:
		}
	}
}

// Settle implements transport.Subscription.
func (s *subscription) Settle(ctx context.Context, ss []transport.Settlement) error {
	if len(ss) == 0 {
		return nil
	}
	return s.d.exec(ctx, func(w *writer) error {
		if err := s.touchEphemeral(w); err != nil {
			return err
		}
		return w.settle(ss)
	}, returnOnCancel|soft)
}

// Extend implements transport.Subscription.
func (s *subscription) Extend(ctx context.Context, ds []*transport.Delivery, lease time.Duration) error {
	if len(ds) == 0 {
		return nil
	}
	if lease <= 0 {
		lease = s.spec.Lease
	}
	return s.d.exec(ctx, func(w *writer) error {
		if err := s.touchEphemeral(w); err != nil {
			return err
		}
		return w.extend(ds, lease)
	}, returnOnCancel|soft)
}

// Close implements transport.Subscription. It wakes blocked Receive calls,
// which return an error wrapping ErrClosed; the durable subscription stays.
// Closing the last receiver this process holds of an ephemeral
// subscription deletes it with everything queued for it.
func (s *subscription) Close() error {
	var err error
	s.once.Do(func() {
		close(s.closed)
		if s.spec.Ephemeral && s.d.ephemeralRef(s.id, -1) == 0 && s.d.checkOpen() == nil {
			err = s.d.dropEphemeral(s.id)
		}
	})
	return err
}

// touchEphemeral records that a receiver of an ephemeral subscription is
// alive (see reapEphemeral).
func (s *subscription) touchEphemeral(w *writer) error {
	if !s.spec.Ephemeral {
		return nil
	}
	_, err := w.conn.ExecContext(context.Background(), `UPDATE subscriptions SET touched_at = ? WHERE id = ?`, w.now, s.id)
	return err
}

// receive leases for s unless its handler is paused. An ephemeral
// subscription is touched on the way; one that has been reaped is an
// error, since nothing will ever be delivered to it again.
func (w *writer) receive(s *subscription, max int) ([]*transport.Delivery, int64, error) {
	bg := context.Background()
	var paused bool
	var pos subPos
	var err error
	if s.spec.Ephemeral {
		err = w.st.touchSub.QueryRowContext(bg, w.now, s.id).Scan(&paused, &pos.head, &pos.pattern)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, 0, fmt.Errorf("sqlite transport: ephemeral subscription %q: %w (it was deleted: no receiver touched it for %d leases, or another receiver of this process closed it)",
				s.spec.Name, transport.ErrNotFound, reapAfter)
		}
	} else {
		err = w.st.subPaused.QueryRowContext(bg, s.id).Scan(&paused, &pos.head, &pos.pattern)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, 0, nil // unsubscribed: there is nothing to lease
		}
	}
	if err != nil {
		return nil, 0, err
	}
	if paused {
		// Resume wakes the receivers: a local one through its wake signal,
		// another process's through the data-version poll.
		return nil, 0, nil
	}
	return w.lease(s.id, pos, s.spec.Ordered, max, s.spec.Lease)
}
