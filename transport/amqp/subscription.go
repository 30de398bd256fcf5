package amqp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ripplehq/ripple/transport"
)

// bindingKey maps a Ripple pattern to an AMQP topic binding key: "*" stays
// "*" and a trailing ">" (one or more segments) becomes "*.#".
func bindingKey(pattern string) string {
	if p, ok := strings.CutSuffix(pattern, ">"); ok {
		return p + "*.#"
	}
	return pattern
}

// Delay buckets: a retry or delayed event waits in the handler's delay
// queue of the largest bucket not over the time left (each queue has one
// TTL, so its head always expires first), then comes back to the handler
// queue; one still early waits again. The smallest bucket bounds how late
// a delay can be.
const (
	minBucket  = 10 * time.Millisecond
	numBuckets = 23 // 10 ms .. ~11.6 h
)

func bucketFor(left time.Duration) time.Duration {
	b := minBucket
	for range numBuckets - 1 {
		if b*2 > left {
			break
		}
		b *= 2
	}
	return b
}

// queueArgs are the arguments of a handler's queue.
func (d *Driver) queueArgs(spec transport.SubscriptionSpec) (amqp.Table, bool, bool) {
	if spec.Ephemeral {
		return amqp.Table{"x-expires": ephemeralExpiry(spec.Lease)}, false, false
	}
	return amqp.Table{"x-queue-type": d.queueType}, true, false
}

func ephemeralExpiry(lease time.Duration) int64 {
	return max(int64(4*lease/time.Millisecond), 10_000)
}

func (d *Driver) deadArgs(ephemeral bool, lease time.Duration) amqp.Table {
	t := amqp.Table{}
	if ephemeral {
		t["x-expires"] = ephemeralExpiry(lease)
	} else {
		t["x-queue-type"] = "quorum"
	}
	if d.ret.DeadCount > 0 {
		t["x-max-length"] = int64(d.ret.DeadCount)
	} else {
		t["x-max-length"] = int64(0)
	}
	if d.ret.DeadAge > 0 {
		t["x-message-ttl"] = d.ret.DeadAge.Milliseconds()
	}
	return t
}

func (d *Driver) delayArgs(handler string, ttl time.Duration, ephemeral bool, lease time.Duration) amqp.Table {
	t := amqp.Table{
		"x-message-ttl":             ttl.Milliseconds(),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": d.queueName(handler),
	}
	if ephemeral {
		t["x-expires"] = ephemeralExpiry(lease) + ttl.Milliseconds()
	} else {
		t["x-queue-type"] = "quorum"
		t["x-overflow"] = "reject-publish"
		t["x-dead-letter-strategy"] = "at-least-once"
	}
	return t
}

// Subscribe implements transport.Driver.
func (d *Driver) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	if spec.Lease <= 0 {
		spec.Lease = 30 * time.Second
	}
	if !spec.From.IsZero() {
		return nil, fmt.Errorf("amqp: starting a subscription from history: %w", errNotSupported("StartFrom"))
	}
	if spec.Ordered {
		return nil, fmt.Errorf("amqp: ordered subscriptions: %w", errNotSupported("Ordered"))
	}
	s := &subscription{
		d:        d,
		spec:     spec,
		queue:    d.queueName(spec.Name),
		inflight: map[*lease]struct{}{},
		done:     make(chan struct{}),
	}
	if err := d.refuseKindClash(ctx, spec); err != nil {
		return nil, err
	}
	if err := s.declare(ctx); err != nil {
		return nil, err
	}
	// Ephemeral handlers are recorded too, so that Stats in other
	// processes lists them while they run.
	if err := d.register(ctx, spec.Name, spec.Pattern, spec.Ephemeral); err != nil {
		return nil, fmt.Errorf("amqp: recording handler %q in %s: %w", spec.Name, d.registryName(), err)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		s.Close()
		return nil, ErrClosed
	}
	d.subs[s] = struct{}{}
	d.handlers[spec.Name] = spec.Pattern
	d.mu.Unlock()
	go s.watchdog()
	return s, nil
}

func errNotSupported(option string) error {
	return &notSupported{option}
}

type notSupported struct{ option string }

func (e *notSupported) Error() string {
	return "the amqp transport does not support " + e.option
}

// subscription is a consumer of one handler queue.
type subscription struct {
	d     *Driver
	spec  transport.SubscriptionSpec
	queue string

	mu       sync.Mutex
	chans    [pullChannels]*amqp.Channel
	lost     bool // a channel was lost: declare again before the next
	inflight map[*lease]struct{}
	closed   bool
	done     chan struct{}
	recvMu   sync.Mutex
	// paused is the handler's pause flag as last read, at pausedAt.
	paused   bool
	pausedAt time.Time
}

// lease is the token of one delivery.
type lease struct {
	ch       *amqp.Channel
	tag      uint64
	deadline time.Time
	settled  bool
	raw      amqp.Delivery
	prior    int // attempts used before this delivery's own
}

func (s *subscription) declare(ctx context.Context) error {
	d, spec := s.d, s.spec
	args, durable, autoDelete := d.queueArgs(spec)
	if err := d.declareOnce(ctx, s.queue, args, durable, autoDelete); err != nil {
		return err
	}
	dead := d.deadName(spec.Name)
	if err := d.declareKeeping(ctx, dead, d.deadArgs(spec.Ephemeral, spec.Lease), !spec.Ephemeral); err != nil {
		return err
	}
	if err := d.declareOnce(ctx, d.pausedName(spec.Name), d.pausedArgs(spec.Ephemeral, spec.Lease), !spec.Ephemeral, false); err != nil {
		return err
	}
	return d.admin(ctx, func(ch *amqp.Channel) error {
		if err := ch.QueueBind(s.queue, bindingKey(spec.Pattern), d.exchange, false, nil); err != nil {
			return fmt.Errorf("amqp: binding queue %q to %q: %w", s.queue, spec.Pattern, err)
		}
		return nil
	})
}

// pullChannels bounds the channels one Receive pulls on at once. A
// basic.get on a quorum queue is a Raft command, so one waits for a log
// write; gets on several channels share the broker's writes.
const pullChannels = 16

// channel returns the subscription's i-th open channel on the consume
// connection, opening a fresh one (re-declaring the topology after a lost
// one) when needed.
func (s *subscription) channel(ctx context.Context, i int) (*amqp.Channel, error) {
	s.mu.Lock()
	ch, lost := s.chans[i], s.lost
	s.mu.Unlock()
	if ch != nil && !ch.IsClosed() {
		return ch, nil
	}
	if ch != nil || lost {
		// The channel or connection was lost: its unacknowledged
		// deliveries went back to the queue. Declare again in case the
		// broker lost the queue (an ephemeral one expired).
		s.d.forget(s.queue, s.d.deadName(s.spec.Name), s.d.pausedName(s.spec.Name))
		s.mu.Lock()
		for l := range s.inflight {
			if l.ch == ch {
				l.settled = true
				delete(s.inflight, l)
			}
		}
		s.lost = true
		s.mu.Unlock()
		if err := s.declare(ctx); err != nil {
			return nil, err
		}
	}
	c, err := s.d.subConn.get(ctx)
	if err != nil {
		return nil, err
	}
	nch, err := c.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp: opening a channel: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nch.Close()
		return nil, ErrClosed
	}
	s.chans[i], s.lost = nch, false
	return nch, nil
}

// Receive implements transport.Subscription. It takes messages with
// basic.get (a pull: the broker never sends ahead what the caller did not
// ask for, so closing gives nothing back with an attempt counted),
// polling with a short backoff while the queue is empty. Once a message
// is there, it pulls the rest of max on up to pullChannels channels at
// once.
func (s *subscription) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	if max <= 0 {
		max = 1
	}
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	wait := time.Millisecond
	failures := 0
	idle := false
	for {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ch, err := s.channel(ctx, 0)
		if err != nil {
			if err == ErrClosed || ctx.Err() != nil {
				return nil, err
			}
			failures++
			if failures > 3 {
				return nil, err
			}
		}
		var out []*transport.Delivery
		if ch != nil && s.pausedNow(ch) {
			// Paused: hand out nothing, and look again at the flag
			// after pauseCheck.
			ch, wait = nil, pauseCheck
		}
		if ch != nil && idle {
			// While the queue is empty, look at its depth (a read the
			// broker answers from memory) rather than basic.get, which
			// on a quorum queue is a Raft command written to its log.
			if q, err := ch.QueueDeclarePassive(s.queue, false, false, false, false, nil); err == nil && q.Messages == 0 {
				ch = nil
			}
		}
		if ch != nil {
			out = s.pull(ctx, ch, 1)
		}
		if len(out) > 0 && max > 1 {
			out = append(out, s.pullParallel(ctx, max-1)...)
		}
		if len(out) > 0 {
			return out, nil
		}
		idle = true
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.done:
			return nil, ErrClosed
		case <-time.After(wait):
		}
		wait = min(wait*2, 10*time.Millisecond)
	}
}

// pull takes up to n deliveries on one channel.
func (s *subscription) pull(ctx context.Context, ch *amqp.Channel, n int) []*transport.Delivery {
	var out []*transport.Delivery
	for got := 0; got < n; {
		m, ok, err := ch.Get(s.queue, false)
		if err != nil {
			if isNotFound(err) {
				s.d.forget(s.queue)
			}
			break
		}
		if !ok {
			break
		}
		got++
		if dv := s.take(ctx, ch, m); dv != nil {
			out = append(out, dv)
		}
	}
	return out
}

// pullParallel takes up to n deliveries on several channels at once.
func (s *subscription) pullParallel(ctx context.Context, n int) []*transport.Delivery {
	var (
		mu   sync.Mutex
		out  []*transport.Delivery
		left atomic.Int64
		wg   sync.WaitGroup
	)
	left.Store(int64(n))
	for i := range min(n, pullChannels) {
		ch, err := s.channel(ctx, i)
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				got := s.pull(ctx, ch, 1)
				if len(got) == 0 {
					return
				}
				mu.Lock()
				out = append(out, got...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// take turns a broker delivery into a leased Delivery, or re-delays it
// and returns nil when it is not due yet.
func (s *subscription) take(ctx context.Context, ch *amqp.Channel, m amqp.Delivery) *transport.Delivery {
	prior := int(headerInt(m.Headers, hdrAttempts))
	if m.Redelivered {
		// A delivery that came back (its process died, its lease ran
		// out) used an attempt: a new copy carries it in its header, so
		// that each copy comes back at most once and the count is exact
		// on either queue type.
		h := copyTable(m.Headers)
		h[hdrAttempts] = int64(prior + 1)
		if err := s.d.pub.send(ctx, []outgoing{{key: s.queue, msg: s.publishing(m, h)}}); err != nil {
			s.d.log.Warn("amqp: could not count the attempt of a returned event; it returns again", "handler", s.spec.Name, "err", err)
			_ = ch.Nack(m.DeliveryTag, false, true)
			return nil
		}
		_ = m.Ack(false)
		return nil
	}
	if nb := headerInt(m.Headers, hdrNotBefore); nb > 0 {
		if left := time.Until(time.UnixMilli(nb)); left > 0 {
			pub := m
			h := copyTable(m.Headers)
			h[hdrAttempts] = int64(prior)
			if err := s.delay(ctx, pub, h, left); err != nil {
				s.d.log.Warn("amqp: could not re-delay an early event; it returns", "handler", s.spec.Name, "err", err)
				_ = ch.Nack(m.DeliveryTag, false, true)
				return nil
			}
			_ = m.Ack(false)
			return nil
		}
	}
	msg := decode(m.MessageId, m.Type, m.Headers, m.Body)
	first := time.Now()
	if f := headerInt(m.Headers, hdrFirst); f > 0 {
		first = time.UnixMilli(f)
	}
	s.mu.Lock()
	l := &lease{ch: ch, tag: m.DeliveryTag, deadline: time.Now().Add(s.spec.Lease), raw: m, prior: prior}
	s.inflight[l] = struct{}{}
	s.mu.Unlock()
	return &transport.Delivery{Message: msg, Attempt: prior + 1, FirstDelivered: first, Token: l}
}

func copyTable(t amqp.Table) amqp.Table {
	c := make(amqp.Table, len(t)+4)
	for k, v := range t {
		if strings.HasPrefix(k, "x-") {
			continue // broker-set (x-death, x-delivery-count, x-first-death-*)
		}
		c[k] = v
	}
	return c
}

// republish builds a copy of a delivery for the handler's own queues.
func (s *subscription) publishing(m amqp.Delivery, h amqp.Table) amqp.Publishing {
	return amqp.Publishing{
		Headers:      h,
		ContentType:  m.ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.MessageId,
		Type:         m.Type,
		Timestamp:    m.Timestamp,
		Body:         m.Body,
	}
}

// delay sends a copy to wait in a delay queue for left (or to the handler
// queue at once when left <= 0).
func (s *subscription) delay(ctx context.Context, m amqp.Delivery, h amqp.Table, left time.Duration) error {
	o, err := s.route(ctx, m, h, left)
	if err != nil {
		return err
	}
	return s.d.pub.send(ctx, []outgoing{o})
}

func (s *subscription) route(ctx context.Context, m amqp.Delivery, h amqp.Table, left time.Duration) (outgoing, error) {
	if left <= 0 {
		delete(h, hdrNotBefore)
		return outgoing{exchange: "", key: s.queue, msg: s.publishing(m, h)}, nil
	}
	h[hdrNotBefore] = time.Now().Add(left).UnixMilli()
	b := bucketFor(left)
	q := s.d.delayName(s.spec.Name, b)
	if err := s.d.declareOnce(ctx, q, s.d.delayArgs(s.spec.Name, b, s.spec.Ephemeral, s.spec.Lease), !s.spec.Ephemeral, false); err != nil {
		return outgoing{}, err
	}
	return outgoing{exchange: "", key: q, msg: s.publishing(m, h)}, nil
}

// watchdog gives back deliveries whose lease ran out (basic.nack with
// requeue: the broker marks it redelivered, and take counts the attempt).
func (s *subscription) watchdog() {
	tick := min(max(s.spec.Lease/4, 5*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		now := time.Now()
		var expired []*lease
		s.mu.Lock()
		for l := range s.inflight {
			if !l.settled && now.After(l.deadline) {
				l.settled = true
				delete(s.inflight, l)
				expired = append(expired, l)
			}
		}
		s.mu.Unlock()
		for _, l := range expired {
			_ = l.ch.Nack(l.tag, false, true)
		}
	}
}

// Extend implements transport.Subscription.
func (s *subscription) Extend(ctx context.Context, ds []*transport.Delivery, leaseFor time.Duration) error {
	until := time.Now().Add(leaseFor)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		if l, ok := d.Token.(*lease); ok && !l.settled {
			l.deadline = until
		}
	}
	return nil
}

// Settle implements transport.Subscription. Retry, Release and Dead
// publish a copy (to a delay queue, the handler queue or the dead-letter
// queue), wait for its confirm, then acknowledge the delivery.
func (s *subscription) Settle(ctx context.Context, ss []transport.Settlement) error {
	type pending struct {
		l *lease
		o outgoing
	}
	var acks []*lease
	var pubs []pending
	now := time.Now()
	s.mu.Lock()
	owned := make([]*lease, len(ss))
	for i, st := range ss {
		l, ok := st.Delivery.Token.(*lease)
		if !ok || l.settled || l.ch.IsClosed() {
			continue
		}
		l.settled = true
		delete(s.inflight, l)
		owned[i] = l
	}
	s.mu.Unlock()
	var firstErr error
	var failed, completed []string
	for i, st := range ss {
		l := owned[i]
		if l == nil {
			continue
		}
		if st.Outcome == transport.Retry || st.Outcome == transport.Dead {
			failed = append(failed, l.raw.MessageId)
		}
		h := copyTable(l.raw.Headers)
		if _, ok := h[hdrFirst]; !ok {
			h[hdrFirst] = st.Delivery.FirstDelivered.UnixMilli()
		}
		switch st.Outcome {
		case transport.Complete:
			acks = append(acks, l)
			completed = append(completed, l.raw.MessageId)
			continue
		case transport.Retry:
			h[hdrAttempts] = int64(st.Delivery.Attempt)
			if st.Error != "" {
				h[hdrError] = st.Error
			}
		case transport.Release:
			h[hdrAttempts] = int64(st.Delivery.Attempt - 1)
		case transport.Dead:
			h[hdrAttempts] = int64(st.Delivery.Attempt)
			h[hdrError] = st.Error
			h[hdrDeadAt] = now.UnixMilli()
			delete(h, hdrNotBefore)
			pubs = append(pubs, pending{l, outgoing{exchange: "", key: s.d.deadName(s.spec.Name), msg: s.publishing(l.raw, h)}})
			continue
		default:
			continue
		}
		o, err := s.route(ctx, l.raw, h, st.Delay)
		if err != nil {
			firstErr = err
			_ = l.ch.Nack(l.tag, false, true)
			continue
		}
		pubs = append(pubs, pending{l, o})
	}
	if len(pubs) > 0 {
		out := make([]outgoing, len(pubs))
		for i, p := range pubs {
			out[i] = p.o
		}
		if err := s.d.pub.send(ctx, out); err != nil {
			// Give the originals back: they are delivered again.
			for _, p := range pubs {
				_ = p.l.ch.Nack(p.l.tag, false, true)
			}
			if firstErr == nil {
				firstErr = err
			}
		} else {
			for _, p := range pubs {
				acks = append(acks, p.l)
			}
		}
	}
	for _, l := range acks {
		if err := l.ch.Ack(l.tag, false); err != nil && firstErr == nil && !l.ch.IsClosed() {
			firstErr = fmt.Errorf("amqp: ack: %w", err)
		}
	}
	s.d.recordHistory(ctx, s.d.completedName(s.spec.Name), completed)
	s.d.recordHistory(ctx, s.d.failedName(s.spec.Name), failed)
	return firstErr
}

// Close implements transport.Subscription: the consumer's channel closes,
// so the broker returns every unacknowledged delivery to the queue.
func (s *subscription) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	// A Receive in progress gives up; deliveries it handed out as the
	// caller was stopping are settled (released) just after: give them a
	// moment before the channel's close returns them with an attempt
	// counted.
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		n := len(s.inflight)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.mu.Lock()
	chans := s.chans
	s.mu.Unlock()
	for _, ch := range chans {
		if ch != nil {
			ch.Close()
		}
	}
	s.d.mu.Lock()
	delete(s.d.subs, s)
	s.d.mu.Unlock()
	if s.spec.Ephemeral {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.d.Unsubscribe(ctx, s.spec.Name); err != nil && !errors.Is(err, transport.ErrNotFound) {
			return fmt.Errorf("amqp: deleting ephemeral subscription %q: %w", s.spec.Name, err)
		}
	}
	return nil
}
