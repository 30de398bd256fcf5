package amqp

import (
	"context"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ripplehq/ripple/transport"
)

// A handler's pause flag is a queue of its own, NAMESPACE.paused.HANDLER
// (durable classic, at most one message): a message in it means paused.
// Pause publishes one (awaiting the broker's confirm), Resume purges it.
// Every receiver of the handler reads its depth with a passive
// queue.declare, which the broker answers from memory, at least every
// pauseCheck, so every process stops handing out deliveries within about
// that long; deliveries already leased finish as usual, and events keep
// arriving in the handler's queue meanwhile.

// pauseCheck is how stale a receiver's view of the pause flag may be.
const pauseCheck = 250 * time.Millisecond

var _ transport.Pauser = (*Driver)(nil)

// pausedName is the queue whose depth is a handler's pause flag.
func (d *Driver) pausedName(handler string) string { return d.ns + ".paused." + handler }

// pausedArgs are the pause flag queue's arguments: one message at most,
// a second Pause replacing the first.
func (d *Driver) pausedArgs(ephemeral bool, lease time.Duration) amqp.Table {
	t := amqp.Table{"x-max-length": int64(1), "x-overflow": "drop-head"}
	if ephemeral {
		t["x-expires"] = ephemeralExpiry(lease)
	}
	return t
}

// ensurePaused makes sure the handler's pause flag queue exists: an
// ephemeral handler's was declared by its subscription (non-durable),
// a durable handler's is declared here if an older process subscribed it.
func (d *Driver) ensurePaused(ctx context.Context, handler string) error {
	q := d.pausedName(handler)
	_, ok, err := d.passiveCount(ctx, q)
	if err != nil || ok {
		return err
	}
	d.forget(q)
	return d.declareOnce(ctx, q, d.pausedArgs(false, 0), true, false)
}

// Pause implements transport.Pauser.
func (d *Driver) Pause(ctx context.Context, handler string) error {
	if d.isClosed() {
		return ErrClosed
	}
	if err := d.requireHandler(ctx, handler); err != nil {
		return err
	}
	if err := d.ensurePaused(ctx, handler); err != nil {
		return fmt.Errorf("amqp: pause %q: %w", handler, err)
	}
	err := d.pub.send(ctx, []outgoing{{key: d.pausedName(handler), msg: amqp.Publishing{
		DeliveryMode: amqp.Persistent, Timestamp: time.Now(), Body: []byte("paused"),
	}}})
	if err != nil {
		return fmt.Errorf("amqp: pause %q: %w", handler, err)
	}
	d.notePaused(handler, true)
	return nil
}

// Resume implements transport.Pauser.
func (d *Driver) Resume(ctx context.Context, handler string) error {
	if d.isClosed() {
		return ErrClosed
	}
	if err := d.requireHandler(ctx, handler); err != nil {
		return err
	}
	if err := d.ensurePaused(ctx, handler); err != nil {
		return fmt.Errorf("amqp: resume %q: %w", handler, err)
	}
	err := d.admin(ctx, func(ch *amqp.Channel) error {
		_, err := ch.QueuePurge(d.pausedName(handler), false)
		return err
	})
	if err != nil {
		return fmt.Errorf("amqp: resume %q: %w", handler, err)
	}
	d.notePaused(handler, false)
	return nil
}

// requireHandler fails with an error wrapping ErrNotFound when the
// handler's queue does not exist.
func (d *Driver) requireHandler(ctx context.Context, handler string) error {
	_, ok, err := d.passiveCount(ctx, d.queueName(handler))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("amqp: handler %q: %w", handler, transport.ErrNotFound)
	}
	return nil
}

// notePaused tells this process's receivers of handler at once.
func (d *Driver) notePaused(handler string, paused bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.subs {
		if s.spec.Name == handler {
			s.mu.Lock()
			s.paused, s.pausedAt = paused, time.Now()
			s.mu.Unlock()
		}
	}
}

// isPaused reports whether the handler's pause flag is set.
func (d *Driver) isPaused(ctx context.Context, handler string) (bool, error) {
	n, _, err := d.passiveCount(ctx, d.pausedName(handler))
	return n > 0, err
}

// pausedNow reports whether the subscription's handler is paused, reading
// the flag on ch when the last reading is older than pauseCheck. A flag
// that cannot be read counts as not paused: the flag queue is declared
// again with the channel.
func (s *subscription) pausedNow(ch *amqp.Channel) bool {
	s.mu.Lock()
	paused, at := s.paused, s.pausedAt
	s.mu.Unlock()
	if time.Since(at) < pauseCheck {
		return paused
	}
	q, err := ch.QueueDeclarePassive(s.d.pausedName(s.spec.Name), false, false, false, false, nil)
	paused = err == nil && q.Messages > 0
	if isNotFound(err) {
		s.d.forget(s.d.pausedName(s.spec.Name))
	}
	s.mu.Lock()
	s.paused, s.pausedAt = paused, time.Now()
	s.mu.Unlock()
	return paused
}
