package amqp

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ripplehq/ripple/transport"
)

// completedName is the queue keeping the ids of a handler's recently
// completed events (retention's completed history).
func (d *Driver) completedName(handler string) string { return d.ns + ".done." + handler }

func (d *Driver) completedArgs() amqp.Table {
	t := amqp.Table{"x-max-length": int64(max(d.ret.CompletedCount, 0)), "x-overflow": "drop-head"}
	if d.ret.CompletedAge > 0 {
		t["x-message-ttl"] = d.ret.CompletedAge.Milliseconds()
	}
	return t
}

// passiveCount returns a queue's ready message count, or 0 when it does
// not exist.
func (d *Driver) passiveCount(ctx context.Context, name string) (int, bool, error) {
	var n int
	err := d.admin(ctx, func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
		n = q.Messages
		return err
	})
	if isNotFound(err) {
		return 0, false, nil
	}
	return n, err == nil, err
}

// knownHandlers lists the handlers subscribed through this driver
// (ephemeral ones included, which the registry does not keep).
func (d *Driver) knownHandlers() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := make(map[string]string, len(d.handlers))
	for k, v := range d.handlers {
		m[k] = v
	}
	return m
}

// Stats implements transport.Inspector for the namespace's registered
// handlers and those subscribed through this driver: waiting, delayed, completed and dead come from the
// broker's queue depths; active counts this process's leased deliveries.
func (d *Driver) Stats(ctx context.Context) ([]transport.Stats, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	reg, err := d.handlersFromRegistry(ctx)
	if err != nil {
		return nil, err
	}
	hs := make(map[string]string, len(reg))
	for n, r := range reg {
		if r.ephemeral {
			// An ephemeral handler whose queue the broker expired
			// belonged to a process that died: forget it.
			_, exists, err := d.passiveCount(ctx, d.queueName(n))
			if err != nil {
				return nil, err
			}
			if !exists {
				if err := d.unregister(ctx, n); err != nil {
					d.log.Warn("amqp: could not forget an expired ephemeral handler", "handler", n, "err", err)
				}
				continue
			}
		}
		hs[n] = r.pattern
	}
	for n, p := range d.knownHandlers() {
		hs[n] = p
	}
	names := make([]string, 0, len(hs))
	for n := range hs {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []transport.Stats
	for _, n := range names {
		st, err := d.handlerStats(ctx, n, hs[n])
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

func (d *Driver) handlerStats(ctx context.Context, name, pattern string) (transport.Stats, error) {
	st := transport.Stats{Handler: name, Pattern: pattern}
	w, _, err := d.passiveCount(ctx, d.queueName(name))
	if err != nil {
		return st, err
	}
	st.Waiting = int64(w)
	dead, _, err := d.passiveCount(ctx, d.deadName(name))
	if err != nil {
		return st, err
	}
	st.Dead = int64(dead)
	done, _, err := d.passiveCount(ctx, d.completedName(name))
	if err != nil {
		return st, err
	}
	st.Completed = int64(done)
	failed, _, err := d.passiveCount(ctx, d.failedName(name))
	if err != nil {
		return st, err
	}
	st.Failed = int64(failed)
	if st.Paused, err = d.isPaused(ctx, name); err != nil {
		return st, err
	}
	d.mu.Lock()
	_, local := d.handlers[name]
	d.mu.Unlock()
	b := minBucket
	for range numBuckets {
		q := d.delayName(name, b)
		d.mu.Lock()
		known := d.declared[q]
		d.mu.Unlock()
		// A process that does not run the handler does not know which
		// delay queues exist: it asks for each.
		if known || !local {
			n, _, err := d.passiveCount(ctx, q)
			if err != nil {
				return st, err
			}
			st.Delayed += int64(n)
		}
		b *= 2
	}
	d.mu.Lock()
	for s := range d.subs {
		if s.spec.Name == name {
			s.mu.Lock()
			st.Active += int64(len(s.inflight))
			s.mu.Unlock()
		}
	}
	d.mu.Unlock()
	return st, nil
}

// failedName is the queue keeping one record per failed attempt of a
// handler (Stats' Failed), kept as long as completed history.
func (d *Driver) failedName(handler string) string { return d.ns + ".failed." + handler }

// recordHistory notes completed events or failed attempts in one of the
// handler's history queues (ids only, not waited for: history, not
// events).
func (d *Driver) recordHistory(ctx context.Context, q string, ids []string) {
	if d.ret.CompletedCount <= 0 || len(ids) == 0 {
		return
	}
	if err := d.declareKeeping(ctx, q, d.completedArgs(), true); err != nil {
		d.log.Warn("amqp: cannot keep history", "queue", q, "err", err)
		return
	}
	out := make([]outgoing, len(ids))
	for i, id := range ids {
		out[i] = outgoing{key: q, msg: amqp.Publishing{MessageId: id, Timestamp: time.Now()}}
	}
	d.pub.sendNoWait(ctx, out)
}

// scan takes every message of a dead-letter queue on one channel, calls
// fn for each in order, and acknowledges those fn returns true for; the
// rest go back to the queue when the channel closes.
func (d *Driver) scan(ctx context.Context, handler string, limit int, fn func(m amqp.Delivery) (bool, error)) error {
	q := d.deadName(handler)
	if _, ok, err := d.passiveCount(ctx, q); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("amqp: handler %q has no dead-letter queue: %w", handler, transport.ErrNotFound)
	}
	return d.admin(ctx, func(ch *amqp.Channel) error {
		before, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		if err != nil {
			return err
		}
		n, taken := 0, 0
		var keep []amqp.Delivery
		defer func() {
			// Give back the rest at once and wait until the queue shows
			// them again, so that statistics read next count them.
			for _, m := range keep {
				_ = m.Nack(false, true)
			}
			if len(keep) == 0 {
				return
			}
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) && !ch.IsClosed() {
				st, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
				if err != nil || st.Messages >= before.Messages-taken {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		for limit <= 0 || n < limit {
			m, ok, err := ch.Get(q, false)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			n++
			take, err := fn(m)
			if err != nil {
				keep = append(keep, m)
				return err
			}
			if !take {
				keep = append(keep, m)
				continue
			}
			if err := m.Ack(false); err != nil {
				return err
			}
			taken++
		}
		return nil
	})
}

func deadLetter(handler string, m amqp.Delivery) transport.DeadLetter {
	dl := transport.DeadLetter{
		Message:  decode(m.MessageId, m.Type, m.Headers, m.Body),
		Handler:  handler,
		Attempts: int(headerInt(m.Headers, hdrAttempts)),
		Error:    headerString(m.Headers, hdrError),
	}
	if f := headerInt(m.Headers, hdrFirst); f > 0 {
		dl.FirstAttempt = time.UnixMilli(f)
	}
	if t := headerInt(m.Headers, hdrDeadAt); t > 0 {
		dl.DeadAt = time.UnixMilli(t)
	}
	return dl
}

// DeadLetters implements transport.DeadLetterQueue.
func (d *Driver) DeadLetters(ctx context.Context, handler string, limit int) ([]transport.DeadLetter, error) {
	var out []transport.DeadLetter
	err := d.scan(ctx, handler, limit, func(m amqp.Delivery) (bool, error) {
		out = append(out, deadLetter(handler, m))
		return false, nil
	})
	return out, err
}

// Requeue implements transport.DeadLetterQueue: each chosen dead letter
// is published to the handler's queue with a fresh attempt budget, then
// removed from the dead-letter queue.
func (d *Driver) Requeue(ctx context.Context, handler string, ids []string) (int, error) {
	n := 0
	err := d.scan(ctx, handler, 0, func(m amqp.Delivery) (bool, error) {
		if len(ids) > 0 && !slices.Contains(ids, m.MessageId) {
			return false, nil
		}
		h := copyTable(m.Headers)
		for _, k := range []string{hdrAttempts, hdrError, hdrDeadAt, hdrFirst, hdrNotBefore} {
			delete(h, k)
		}
		o := outgoing{key: d.queueName(handler), msg: amqp.Publishing{
			Headers: h, ContentType: m.ContentType, DeliveryMode: amqp.Persistent,
			MessageId: m.MessageId, Type: m.Type, Timestamp: m.Timestamp, Body: m.Body,
		}}
		if err := d.pub.send(ctx, []outgoing{o}); err != nil {
			return false, err
		}
		n++
		return true, nil
	})
	return n, err
}

// Purge implements transport.DeadLetterQueue.
func (d *Driver) Purge(ctx context.Context, handler string, ids []string) (int, error) {
	if len(ids) == 0 {
		if _, ok, err := d.passiveCount(ctx, d.deadName(handler)); err != nil {
			return 0, err
		} else if !ok {
			return 0, fmt.Errorf("amqp: handler %q has no dead-letter queue: %w", handler, transport.ErrNotFound)
		}
		var n int
		err := d.admin(ctx, func(ch *amqp.Channel) error {
			var err error
			n, err = ch.QueuePurge(d.deadName(handler), false)
			return err
		})
		return n, err
	}
	n := 0
	err := d.scan(ctx, handler, 0, func(m amqp.Delivery) (bool, error) {
		if slices.Contains(ids, m.MessageId) {
			n++
			return true, nil
		}
		return false, nil
	})
	return n, err
}

// Unsubscribe implements transport.Unsubscriber: the handler's queue, its
// delay queues, its completed history and its dead letters are deleted.
func (d *Driver) Unsubscribe(ctx context.Context, handler string) error {
	if _, ok, err := d.passiveCount(ctx, d.queueName(handler)); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("amqp: handler %q: %w", handler, transport.ErrNotFound)
	}
	names := []string{d.queueName(handler), d.deadName(handler), d.completedName(handler), d.failedName(handler), d.pausedName(handler)}
	b := minBucket
	for range numBuckets {
		names = append(names, d.delayName(handler, b))
		b *= 2
	}
	for _, q := range names {
		err := d.admin(ctx, func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(q, false, false, false)
			return err
		})
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("amqp: deleting queue %q: %w", q, err)
		}
	}
	d.forget(names...)
	if err := d.unregister(ctx, handler); err != nil {
		return fmt.Errorf("amqp: removing handler %q from %s: %w", handler, d.registryName(), err)
	}
	d.mu.Lock()
	delete(d.handlers, handler)
	d.mu.Unlock()
	return nil
}
