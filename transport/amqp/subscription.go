package amqp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
		arrived:  make(chan struct{}, 1),
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
	chans    [numChannels]*amqp.Channel
	cons     *consumerState // guarded by recvMu
	prefetch int            // guarded by recvMu
	ahead    []ahead        // sent ahead by the broker, not yet received
	arrived  chan struct{}  // signalled when ahead grows
	lost     bool           // a channel was lost: declare again before the next
	inflight map[*lease]struct{}
	closed   bool
	done     chan struct{}
	recvMu   sync.Mutex
	// ackMu gates acknowledgements on the consume channel: those that
	// give a consumer credit back take it shared; stopConsumer holds it
	// from its last count of the consumer's credit to the basic.cancel,
	// so that no credit is freed in between (see useUpCredit).
	ackMu sync.RWMutex
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

// Receive implements transport.Subscription. It consumes the handler's
// queue (basic.consume with manual acks) with a prefetch of the leases it
// holds plus max, the handler's free slots (the largest such sum yet, at
// most the handler's Concurrency plus the outcomes queued and not yet
// settled, whose deliveries are still unacknowledged): the broker sends
// ahead only what free slots will take.
// What was sent ahead and is not handed out within aheadWait (its
// process's slots are all busy) is given back (see giveBack), and so is
// everything sent ahead when the consumer stops: a closing or paused
// receiver.
func (s *subscription) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	if max <= 0 {
		max = 1
	}
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	// The handler has at least max free slots beside the deliveries it
	// holds: a prefetch below that would hold it back (a rate-limited
	// handler asks for one at a time), so the consumer starts again with
	// a larger one. The prefetch only grows, up to the handler's
	// Concurrency.
	s.mu.Lock()
	want := len(s.inflight) + max
	s.mu.Unlock()
	if want > s.prefetch {
		if s.prefetch > 0 {
			s.stopConsumer(ctx)
		}
		s.prefetch = want
	}
	failures := 0
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
		ctl, err := s.channel(ctx, ctlChannel)
		if err == nil && s.pausedNow(ctl) {
			s.stopConsumer(ctx)
			if err := s.sleep(ctx, pauseCheck); err != nil {
				return nil, err
			}
			continue
		}
		var c *consumerState
		if err == nil {
			c, err = s.consumer(ctx)
		}
		if err != nil {
			if err == ErrClosed || ctx.Err() != nil {
				return nil, err
			}
			failures++
			if failures > 3 {
				return nil, err
			}
			if err := s.sleep(ctx, time.Duration(failures)*50*time.Millisecond); err != nil {
				return nil, err
			}
			continue
		}
		if out := s.takeAhead(ctx, max); len(out) > 0 {
			return out, nil
		}
		timer := time.NewTimer(pauseCheck)
		select {
		case <-s.arrived:
		case <-c.ended:
			// Cancelled by the broker (queue deleted) or the channel
			// closed: consume again on the next round.
			s.stopConsumer(ctx)
		case <-ctx.Done():
		case <-s.done:
		case <-timer.C:
			// Look at the pause flag again.
		}
		timer.Stop()
	}
}

// aheadWait is how long a delivery the broker sent ahead may wait for a
// Receive before it is given back to the queue for other processes.
const aheadWait = time.Second

// ahead is a delivery the broker sent ahead that no Receive took yet.
type ahead struct {
	ch *amqp.Channel
	m  amqp.Delivery
	at time.Time
}

// takeAhead turns up to max deliveries sent ahead into leased ones.
func (s *subscription) takeAhead(ctx context.Context, max int) []*transport.Delivery {
	var out []*transport.Delivery
	for len(out) < max {
		s.mu.Lock()
		if len(s.ahead) == 0 {
			s.mu.Unlock()
			break
		}
		a := s.ahead[0]
		s.ahead[0] = ahead{}
		s.ahead = s.ahead[1:]
		s.mu.Unlock()
		if a.ch.IsClosed() {
			continue // the broker took it back with the channel
		}
		if dv := s.take(ctx, a.ch, a.m); dv != nil {
			out = append(out, dv)
		}
	}
	return out
}

func (s *subscription) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrClosed
	case <-t.C:
		return nil
	}
}

// Channels of a subscription: one for the pause flag, one consuming.
const (
	ctlChannel = iota
	consumeChannel
	numChannels
)

// consumerState is a running basic.consume; recvMu guards it.
type consumerState struct {
	ch    *amqp.Channel
	tag   string
	ended chan struct{} // closed when its deliveries end
}

// consumerSeq numbers consumer tags, unique per channel.
var consumerSeq atomic.Uint64

// consumer returns the running consumer, starting one (with the
// subscription's prefetch) when none runs. recvMu is held.
func (s *subscription) consumer(ctx context.Context) (*consumerState, error) {
	if s.cons != nil && !s.cons.ch.IsClosed() {
		return s.cons, nil
	}
	s.cons = nil
	ch, err := s.channel(ctx, consumeChannel)
	if err != nil {
		return nil, err
	}
	if err := ch.Qos(s.prefetch, 0, false); err != nil {
		return nil, fmt.Errorf("amqp: setting the prefetch of %q: %w", s.queue, err)
	}
	tag := "ripple-" + strconv.FormatUint(consumerSeq.Add(1), 10)
	// Not ConsumeWithContext: its context would cancel the consumer
	// when this Receive returns.
	dels, err := ch.Consume(s.queue, tag, false, false, false, false, nil)
	if err != nil {
		if isNotFound(err) {
			s.d.forget(s.queue)
		}
		return nil, fmt.Errorf("amqp: consuming %q: %w", s.queue, err)
	}
	c := &consumerState{ch: ch, tag: tag, ended: make(chan struct{})}
	go func() {
		defer close(c.ended)
		for m := range dels {
			s.mu.Lock()
			s.ahead = append(s.ahead, ahead{ch: ch, m: m, at: time.Now()})
			s.mu.Unlock()
			select {
			case s.arrived <- struct{}{}:
			default:
			}
		}
	}()
	s.cons = c
	return c, nil
}

// stopConsumer cancels the consumer (basic.cancel), waits for what the
// broker sent before it stopped, and gives back every delivery sent ahead
// (see giveBack). recvMu is held.
func (s *subscription) stopConsumer(ctx context.Context) {
	c := s.cons
	s.cons = nil
	if c != nil {
		gated := s.quorum() && !s.spec.Ephemeral
		if gated {
			s.useUpCredit(ctx, c) // returns with ackMu held
		}
		cancelled := !c.ch.IsClosed() && c.ch.Cancel(c.tag, false) == nil
		if gated {
			s.ackMu.Unlock()
		}
		if cancelled {
			select {
			case <-c.ended:
			case <-time.After(5 * time.Second):
			}
		}
	}
	s.mu.Lock()
	left := s.ahead
	s.ahead = nil
	s.mu.Unlock()
	s.giveBack(ctx, left)
}

// quorum reports whether the handler's queue is a quorum queue.
func (s *subscription) quorum() bool {
	return !s.spec.Ephemeral && s.d.queueType == "quorum"
}

// useUpCredit waits until the consumer holds as many unacknowledged
// deliveries as its prefetch allows, so that the broker has nothing in
// flight to it when it is cancelled. A quorum queue may deliver after it
// confirmed a basic.cancel; amqp091 drops such a delivery (its consumer
// is gone), and the broker returns it marked redelivered when the channel
// closes, which would count an attempt no handler made. When the queue
// has too few messages to use up the credit, filler messages (dropped by
// whichever receiver gets them) are published to it. It gives up after a
// few seconds (other consumers keep taking the fillers), leaving the
// small chance of an attempt counted in that case.
//
// The count is of the deliveries of this consumer only (its channel may
// still hold deliveries of the consumers it replaced, which use none of
// its credit), and it holds only while nothing is acknowledged: an ack
// between the count and the basic.cancel would give the broker credit to
// deliver once more. So useUpCredit returns with s.ackMu held, from its
// last count on; the caller cancels the consumer, then unlocks it.
func (s *subscription) useUpCredit(ctx context.Context, c *consumerState) {
	deadline := time.Now().Add(5 * time.Second)
	for !c.ch.IsClosed() && time.Now().Before(deadline) {
		s.ackMu.Lock()
		held := s.heldBy(c)
		if held >= s.prefetch {
			return
		}
		s.ackMu.Unlock()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		// Events waiting in the queue use up the credit as well as
		// fillers do: send only what they do not cover.
		ready, _, err := s.d.passiveCount(sctx, s.queue)
		if err == nil && held+ready < s.prefetch {
			out := make([]outgoing, s.prefetch-held-ready)
			for i := range out {
				out[i] = outgoing{key: s.queue, msg: amqp.Publishing{
					Headers: amqp.Table{hdrFiller: int64(1)}, Type: fillerType,
					DeliveryMode: amqp.Transient, Expiration: "5000",
				}}
			}
			err = s.d.pub.send(sctx, out)
		}
		cancel()
		if err != nil {
			return
		}
		// Wait for them (or others' events) to arrive.
		wait := time.NewTimer(100 * time.Millisecond)
		for s.heldBy(c) < s.prefetch {
			select {
			case <-s.arrived:
				continue
			case <-wait.C:
			case <-c.ended:
			}
			break
		}
		wait.Stop()
	}
	s.ackMu.Lock()
}

// heldBy counts the deliveries of consumer c this subscription holds
// unacknowledged: sent ahead, or leased.
func (s *subscription) heldBy(c *consumerState) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.ahead {
		if a.ch == c.ch && a.m.ConsumerTag == c.tag {
			n++
		}
	}
	for l := range s.inflight {
		if l.ch == c.ch && l.raw.ConsumerTag == c.tag {
			n++
		}
	}
	return n
}

// Filler messages use up a stopping consumer's credit (useUpCredit).
const (
	hdrFiller  = "ripple-filler"
	fillerType = "ripple.filler"
)

func isFiller(m amqp.Delivery) bool {
	_, ok := m.Headers[hdrFiller]
	return ok
}

// giveBack returns deliveries sent ahead and never handed out to the
// queue without an attempt counted: each is published again to the
// handler's queue as a copy carrying the attempts it had (awaiting the
// confirm), then acknowledged. Those whose copies could not be published
// are put back in front of s.ahead, still held: handed out by a later
// Receive, or returned by the broker when their channel closes, counted.
func (s *subscription) giveBack(ctx context.Context, left []ahead) {
	var out []outgoing
	var orig, fillers []ahead
	defer func() {
		s.ackMu.RLock()
		defer s.ackMu.RUnlock()
		for _, a := range fillers {
			_ = a.ch.Ack(a.m.DeliveryTag, false)
		}
	}()
	for _, a := range left {
		if a.ch.IsClosed() {
			continue
		}
		if isFiller(a.m) {
			fillers = append(fillers, a)
			continue
		}
		h := copyTable(a.m.Headers)
		prior := headerInt(a.m.Headers, hdrAttempts)
		if a.m.Redelivered {
			prior++ // as take counts it
		}
		h[hdrAttempts] = prior
		out = append(out, outgoing{key: s.queue, msg: s.publishing(a.m, h)})
		orig = append(orig, a)
	}
	if len(out) == 0 {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.d.pub.send(sctx, out); err != nil {
		s.d.log.Warn("amqp: could not give back events sent ahead; this process keeps them (a closing one's return with an attempt counted)", "handler", s.spec.Name, "events", len(out), "err", err)
		s.mu.Lock()
		s.ahead = append(orig, s.ahead...)
		s.mu.Unlock()
		return
	}
	s.ackMu.RLock()
	defer s.ackMu.RUnlock()
	for _, a := range orig {
		_ = a.ch.Ack(a.m.DeliveryTag, false)
	}
}

// giveBackStale gives back deliveries sent ahead that waited longer than
// aheadWait for a Receive: this process's slots are busy (a handler that
// outlived its lease holds one), so others may take them.
func (s *subscription) giveBackStale() {
	cut := time.Now().Add(-aheadWait)
	s.mu.Lock()
	n := 0
	for n < len(s.ahead) && s.ahead[n].at.Before(cut) {
		n++
	}
	stale := append([]ahead(nil), s.ahead[:n]...)
	s.ahead = s.ahead[n:]
	s.mu.Unlock()
	if len(stale) > 0 {
		s.giveBack(context.Background(), stale)
	}
}

// take turns a broker delivery into a leased Delivery, or re-delays it
// and returns nil when it is not due yet.
func (s *subscription) take(ctx context.Context, ch *amqp.Channel, m amqp.Delivery) *transport.Delivery {
	if isFiller(m) {
		_ = ch.Ack(m.DeliveryTag, false)
		return nil
	}
	// The delivery is this process's now: finish with it even when the
	// caller stops waiting.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
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
		s.ackMu.RLock()
		for _, l := range expired {
			_ = l.ch.Nack(l.tag, false, true)
		}
		s.ackMu.RUnlock()
		s.giveBackStale()
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
			s.ackMu.RLock()
			_ = l.ch.Nack(l.tag, false, true)
			s.ackMu.RUnlock()
			continue
		}
		pubs = append(pubs, pending{l, o})
	}
	var sendErr error
	if len(pubs) > 0 {
		out := make([]outgoing, len(pubs))
		for i, p := range pubs {
			out[i] = p.o
		}
		sendErr = s.d.pub.send(ctx, out)
	}
	// Acknowledgements give the consumer credit back: none while a
	// stopping consumer counts its credit (see useUpCredit).
	s.ackMu.RLock()
	if len(pubs) > 0 {
		if err := sendErr; err != nil {
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
	s.ackMu.RUnlock()
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
	// What the broker sent ahead goes back without an attempt counted.
	s.stopConsumer(context.Background())
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
