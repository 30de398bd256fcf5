package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple/transport"
)

// pollWait is how long one pull request waits on the server for a first
// message; Receive notices a cancelled context within it.
const pollWait = 500 * time.Millisecond

// Metadata keys on Ripple's consumers.
const (
	metaHandler   = "ripple-handler"
	metaPattern   = "ripple-pattern"
	metaEphemeral = "ripple-ephemeral" // "true" on an ephemeral subscription's consumer
)

// isEphemeral reports whether a Ripple consumer is an ephemeral
// subscription's: marked so, or (consumers made before the mark) reaped
// when idle, which no durable handler's consumer is.
func isEphemeral(c *jetstream.ConsumerConfig) bool {
	return c.Metadata[metaEphemeral] == "true" || c.InactiveThreshold > 0
}

// kindConflict explains why a handler name cannot be subscribed as the
// other kind of subscription than the one that exists.
func kindConflict(handler string, existingEphemeral bool) error {
	if existingEphemeral {
		return fmt.Errorf("nats: handler %s is ephemeral (a ripple tail, say, deleted when its receivers go); it cannot be subscribed as a durable handler: give the durable handler a name of its own", handler)
	}
	return fmt.Errorf("nats: handler %s is durable; it cannot be subscribed as an ephemeral one (deleted when its receivers go, with what is queued for it): give the ephemeral subscription a name of its own", handler)
}

// subscription is one receiver of a handler's durable pull consumer.
type subscription struct {
	d     *Driver
	spec  transport.SubscriptionSpec
	tok   string
	cons  jetstream.Consumer
	lease time.Duration // the consumer's AckWait

	mu     sync.Mutex
	closed bool
	// fetch serializes pull requests: one outstanding per receiver.
	fetch sync.Mutex
}

// lease carries a delivery's message back to Settle and Extend.
type lease struct {
	msg  jetstream.Msg
	base int // attempts used before this copy was stored

	mu      sync.Mutex
	expires time.Time // when the server may deliver the message again
}

// leaseMargin is how long before its local expiry a lease counts as lost:
// the server starts AckWait when it sends a message, a little before the
// receiver sees it.
func leaseMargin(lease time.Duration) time.Duration {
	return min(lease/5, time.Second)
}

// lost reports whether the lease ran out, so that the server may have
// handed the message to another receiver.
func (l *lease) lost(margin time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().After(l.expires.Add(-margin))
}

// Subscribe implements transport.Driver: it creates or updates the
// handler's durable consumer.
func (d *Driver) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	if spec.Ordered {
		return nil, errors.New("nats: the nats transport does not order events per key (Ordered); the core refuses it before it gets here")
	}
	if !spec.From.IsZero() {
		return nil, errors.New("nats: the nats transport keeps no history a new subscription can start from (From); the core refuses it before it gets here")
	}
	tok := token(spec.Name)
	name := consumerName(spec.Name)
	if len(name) > 255 {
		return nil, fmt.Errorf("nats: handler name %q is too long for a JetStream consumer name once escaped (%d > 255 bytes); use a shorter name", spec.Name, len(name))
	}
	lease := spec.Lease
	if lease <= 0 {
		lease = 30 * time.Second
	}
	cfg := jetstream.ConsumerConfig{
		Durable:        name,
		Description:    "Ripple handler " + spec.Name,
		FilterSubjects: []string{d.eventSubject(spec.Pattern), d.requeueSubject(tok)},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        lease,
		MaxDeliver:     -1,
		MaxAckPending:  -1,
		DeliverPolicy:  jetstream.DeliverNewPolicy,
		Metadata:       map[string]string{metaHandler: spec.Name, metaPattern: spec.Pattern},
	}
	if spec.Ephemeral {
		cfg.InactiveThreshold = max(5*lease, 10*time.Second)
		cfg.Replicas = 1
		cfg.MemoryStorage = true
		cfg.Metadata[metaEphemeral] = "true"
	}
	cons, err := d.subscribeConsumer(ctx, spec, cfg)
	if err != nil {
		return nil, err
	}
	s := &subscription{d: d, spec: spec, tok: tok, cons: cons, lease: lease}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	d.subs[s] = struct{}{}
	if spec.Ephemeral {
		d.ephemeral[name]++
	}
	d.mu.Unlock()
	return s, nil
}

// subscribeConsumer creates the handler's consumer, or updates the one
// that exists. A consumer of the other kind (durable or ephemeral) is
// refused, never replaced: an ephemeral subscription deletes its consumer
// when it goes, which must never take a durable handler's queue with it.
// A new consumer is made with a create that fails if one appeared
// meanwhile, which is then checked again.
func (d *Driver) subscribeConsumer(ctx context.Context, spec transport.SubscriptionSpec, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	name := cfg.Durable
	for range 3 {
		info, err := d.js.Consumer(ctx, d.eventsStream(), name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			cons, err := d.js.CreateConsumer(ctx, d.eventsStream(), cfg)
			if errors.Is(err, jetstream.ErrConsumerExists) {
				continue // made meanwhile by another process: check it
			}
			if err != nil {
				return nil, d.consumerErr(name, err)
			}
			return cons, nil
		}
		if err != nil {
			return nil, d.consumerErr(name, err)
		}
		ci := info.CachedInfo()
		if ci.Config.Metadata[metaHandler] != spec.Name {
			return nil, fmt.Errorf("nats: consumer %s on stream %s exists but was not created by Ripple for handler %q; delete it (nats consumer rm %s %s) or use another prefix", name, d.eventsStream(), spec.Name, d.eventsStream(), name)
		}
		if ephemeral := isEphemeral(&ci.Config); ephemeral != spec.Ephemeral {
			return nil, kindConflict(spec.Name, ephemeral)
		}
		// Keep what the consumer was created with; update what may change.
		cfg.DeliverPolicy = ci.Config.DeliverPolicy
		cfg.OptStartTime = ci.Config.OptStartTime
		cfg.InactiveThreshold = ci.Config.InactiveThreshold
		cfg.MemoryStorage = ci.Config.MemoryStorage
		cfg.Replicas = ci.Config.Replicas
		// An update without it would resume a paused handler.
		cfg.PauseUntil = ci.Config.PauseUntil
		cons, err := d.js.UpdateConsumer(ctx, d.eventsStream(), cfg)
		if errors.Is(err, jetstream.ErrConsumerDoesNotExist) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue // deleted meanwhile (an ephemeral one reaped): start over
		}
		if err != nil {
			return nil, d.consumerErr(name, err)
		}
		return cons, nil
	}
	return nil, fmt.Errorf("nats: consumer %s of handler %q keeps being created and deleted by other processes while this one subscribes; try again", name, spec.Name)
}

func (s *subscription) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Receive implements transport.Subscription. It waits for a first message
// with a pull request of one, then, if that message's metadata says more
// are pending, takes what else is ready without waiting, so that no pull
// request is left open on the server when it returns.
func (s *subscription) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	if max <= 0 {
		max = 1
	}
	s.fetch.Lock()
	defer s.fetch.Unlock()
	for {
		if s.isClosed() {
			return nil, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		batch, err := s.cons.Fetch(1, jetstream.FetchMaxWait(pollWait))
		if err != nil {
			return nil, s.receiveErr(err)
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && len(msgs) == 0 && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, s.receiveErr(err)
		}
		if len(msgs) == 0 {
			continue
		}
		if n := moreWanted(msgs[0], max-1); n > 0 {
			if more, err := s.cons.FetchNoWait(n); err == nil {
				for m := range more.Messages() {
					msgs = append(msgs, m)
				}
			}
		}
		out := make([]*transport.Delivery, 0, len(msgs))
		for _, m := range msgs {
			if d := s.delivery(m); d != nil {
				out = append(out, d)
			}
		}
		if len(out) > 0 {
			return out, ctx.Err()
		}
	}
}

// moreWanted is how many more messages Receive asks for, without waiting,
// after the first: at most room, and none when the first one's metadata
// says the consumer had nothing else pending when it was sent. Each such
// request is a round trip (and a subscription) of its own, which with a
// shallow queue, one event at a time, would mostly come back empty. The
// count is a hint: a message stored meanwhile, or a redelivery (not
// counted as pending), is handed out by the next Receive.
func moreWanted(first jetstream.Msg, room int) int {
	if room <= 0 {
		return 0
	}
	meta, err := first.Metadata()
	if err != nil {
		return room
	}
	return int(min(uint64(room), meta.NumPending))
}

func (s *subscription) receiveErr(err error) error {
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
		return fmt.Errorf("nats: consumer %s of handler %q is gone (deleted by Unsubscribe, by hand, or reaped as an idle ephemeral subscription): %w", consumerName(s.spec.Name), s.spec.Name, err)
	}
	return fmt.Errorf("nats: receive for handler %q: %w", s.spec.Name, err)
}

// delivery turns a fetched message into a delivery. A message Ripple did
// not write is logged and terminated so that it does not come back.
func (s *subscription) delivery(m jetstream.Msg) *transport.Delivery {
	meta, err := m.Metadata()
	if err != nil {
		s.d.log.Error("nats: message without JetStream metadata; terminating it", "handler", s.spec.Name, "err", err)
		_ = m.Term()
		return nil
	}
	msg, err := decode(m.Headers(), m.Data())
	if err != nil {
		s.d.log.Error("nats: foreign message on Ripple's subjects; terminating it", "handler", s.spec.Name, "subject", m.Subject(), "seq", meta.Sequence.Stream, "err", err)
		_ = m.Term()
		return nil
	}
	h := m.Headers()
	base, _ := strconv.Atoi(h.Get(hdrBase))
	first := parseTime(h.Get(hdrFirst))
	published := parseTime(h.Get(hdrPublished))
	if published.IsZero() {
		published = meta.Timestamp
	}
	if first.IsZero() {
		if meta.NumDelivered == 1 && base == 0 {
			first = time.Now()
		} else {
			// The first delivery was not seen here: when the message was
			// stored is the closest bound known.
			first = published
		}
	}
	if due := parseTime(h.Get(hdrDue)); due.After(time.Now()) {
		s.reschedule(m, due)
		return nil
	}
	return &transport.Delivery{
		Message:        msg,
		Attempt:        base + int(meta.NumDelivered),
		FirstDelivered: first,
		Token:          &lease{msg: m, base: base, expires: time.Now().Add(s.lease)},
	}
}

// reschedule schedules again a message that fired at scheduleHorizon
// before its real time, for this handler, and acknowledges it.
func (s *subscription) reschedule(m jetstream.Msg, due time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	h := copyHeader(m.Headers())
	subj := s.d.schedule(h, due, s.d.requeueSubject(s.tok), "rq."+s.tok)
	if _, err := s.d.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: h, Data: m.Data()}); err != nil {
		s.d.log.Warn("nats: cannot schedule a far-future message again; it comes back after its lease", "handler", s.spec.Name, "err", err)
		return
	}
	_ = m.DoubleAck(ctx)
}

// copyOf is the headers of a copy of d's message (a released, dead or
// completed copy): the envelope, when the original was stored and when it
// was first delivered.
func (s *subscription) copyOf(tk *lease, d *transport.Delivery) nats.Header {
	h := copyHeader(tk.msg.Headers())
	if h.Get(hdrPublished) == "" {
		if meta, err := tk.msg.Metadata(); err == nil {
			h.Set(hdrPublished, formatTime(meta.Timestamp))
		}
	}
	if h.Get(hdrFirst) == "" && !d.FirstDelivered.IsZero() {
		h.Set(hdrFirst, formatTime(d.FirstDelivered))
	}
	return h
}

// Settle implements transport.Subscription.
func (s *subscription) Settle(ctx context.Context, ss []transport.Settlement) error {
	var errs []error
	var history []jetstream.PubAckFuture
	var acks []jetstream.Msg
	for _, st := range ss {
		tk, ok := st.Delivery.Token.(*lease)
		if !ok {
			errs = append(errs, fmt.Errorf("nats: settlement of a delivery this transport did not make"))
			continue
		}
		lost := tk.lost(leaseMargin(s.lease))
		if st.Outcome != transport.Complete && lost {
			// Another receiver may hold the message now; it comes back
			// (or is with its new holder) whatever this one decided.
			continue
		}
		switch st.Outcome {
		case transport.Complete:
			// A completion after the lease ran out still acks (the event
			// was handled), but leaves the history copy to the holder.
			if s.d.done != nil && !lost {
				h := s.copyOf(tk, st.Delivery)
				f, err := s.d.js.PublishMsgAsync(&nats.Msg{Subject: s.d.doneSubject(s.tok), Header: h, Data: tk.msg.Data()})
				if err != nil {
					s.d.log.Warn("nats: cannot record completed history", "handler", s.spec.Name, "event", st.Delivery.ID, "err", err)
				} else {
					history = append(history, f)
				}
			}
			acks = append(acks, tk.msg)
		case transport.Retry:
			s.d.countFailure(ctx, s.tok)
			if err := tk.msg.NakWithDelay(st.Delay); err != nil {
				errs = append(errs, fmt.Errorf("nats: retry of event %s: %w", st.Delivery.ID, err))
			}
		case transport.Release:
			if err := s.release(ctx, tk, st); err != nil {
				errs = append(errs, err)
			}
		case transport.Dead:
			s.d.countFailure(ctx, s.tok)
			if err := s.deadLetter(ctx, tk, st); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := tk.msg.DoubleAck(ctx); err != nil && !errors.Is(err, nats.ErrMsgAlreadyAckd) {
				errs = append(errs, fmt.Errorf("nats: acknowledging handler %q's dead-lettered message: %w", s.spec.Name, err))
			}
		default:
			errs = append(errs, fmt.Errorf("nats: unknown outcome %v", st.Outcome))
		}
	}
	// Completions are recorded in the background, as the contract allows:
	// the history copies and the acks are on the connection when Settle
	// returns, and Close and Stats flush them. One lost to a crash only
	// means the message is delivered again.
	for _, m := range acks {
		if err := m.Ack(); err != nil && !errors.Is(err, nats.ErrMsgAlreadyAckd) {
			errs = append(errs, fmt.Errorf("nats: acknowledging handler %q's message: %w", s.spec.Name, err))
		}
	}
	for _, f := range history {
		go s.watchHistory(f)
	}
	return errors.Join(errs...)
}

// watchHistory logs a history copy the stream refused.
func (s *subscription) watchHistory(f jetstream.PubAckFuture) {
	select {
	case <-f.Ok():
	case err := <-f.Err():
		s.d.log.Warn("nats: cannot record completed history", "handler", s.spec.Name, "err", err)
	}
}

// release puts a delivery back without using an attempt: a copy that
// records the attempts used goes on the handler's requeue subject (after
// the delay, through the server's scheduler), and the original is acked.
func (s *subscription) release(ctx context.Context, tk *lease, st transport.Settlement) error {
	h := s.copyOf(tk, st.Delivery)
	h.Set(hdrBase, strconv.Itoa(st.Delivery.Attempt-1))
	subj := s.d.requeueSubject(s.tok)
	if st.Delay > 0 {
		subj = s.d.schedule(h, time.Now().Add(st.Delay), subj, "rq."+s.tok)
	}
	if _, err := s.d.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: h, Data: tk.msg.Data()}); err != nil {
		// The original stays leased and comes back after its lease.
		return fmt.Errorf("nats: release of event %s: %w", st.Delivery.ID, err)
	}
	if err := tk.msg.DoubleAck(ctx); err != nil && !errors.Is(err, nats.ErrMsgAlreadyAckd) {
		return fmt.Errorf("nats: release of event %s: %w", st.Delivery.ID, err)
	}
	return nil
}

// deadLetter stores the delivery in the handler's dead-letter subject.
func (s *subscription) deadLetter(ctx context.Context, tk *lease, st transport.Settlement) error {
	if s.d.dead == nil {
		s.d.log.Warn("nats: dead letter dropped: dead-letter retention keeps nothing", "handler", s.spec.Name, "event", st.Delivery.ID, "error", st.Error)
		return nil
	}
	h := s.copyOf(tk, st.Delivery)
	h.Set(hdrError, strconv.Quote(st.Error))
	h.Set(hdrAttempts, strconv.Itoa(st.Delivery.Attempt))
	h.Set(hdrDeadAt, formatTime(time.Now()))
	if _, err := s.d.js.PublishMsg(ctx, &nats.Msg{Subject: s.d.deadSubject(s.tok), Header: h, Data: tk.msg.Data()}); err != nil {
		return fmt.Errorf("nats: dead-lettering event %s: %w", st.Delivery.ID, err)
	}
	return nil
}

// Extend implements transport.Subscription: InProgress restarts each
// delivery's AckWait, which is the subscription's lease.
func (s *subscription) Extend(ctx context.Context, ds []*transport.Delivery, _ time.Duration) error {
	var errs []error
	for _, d := range ds {
		tk, ok := d.Token.(*lease)
		if !ok {
			continue
		}
		if tk.lost(leaseMargin(s.lease)) {
			continue
		}
		sent := time.Now()
		if err := tk.msg.InProgress(); errors.Is(err, nats.ErrMsgAlreadyAckd) {
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("nats: extending the lease of event %s: %w", d.ID, err))
			continue
		}
		tk.mu.Lock()
		tk.expires = sent.Add(s.lease)
		tk.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Close implements transport.Subscription. The last receiver of an
// ephemeral subscription in this process deletes its consumer.
func (s *subscription) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	d := s.d
	d.mu.Lock()
	delete(d.subs, s)
	last := false
	if s.spec.Ephemeral {
		name := consumerName(s.spec.Name)
		d.ephemeral[name]--
		if d.ephemeral[name] <= 0 {
			delete(d.ephemeral, name)
			last = true
		}
	}
	d.mu.Unlock()
	if last && !d.nc.IsClosed() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Reaped while idle and made again as a durable handler by
		// another process: not this subscription's to delete.
		info, err := d.js.Consumer(ctx, d.eventsStream(), consumerName(s.spec.Name))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil
		}
		if err == nil && !isEphemeral(&info.CachedInfo().Config) {
			return nil
		}
		if err := d.js.DeleteConsumer(ctx, d.eventsStream(), consumerName(s.spec.Name)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("nats: deleting ephemeral subscription %q: %w", s.spec.Name, err)
		}
	}
	return nil
}
