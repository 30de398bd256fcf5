package amqp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ripplehq/ripple/transport"
)

// Header names Ripple keeps on AMQP messages.
const (
	hdrKey        = "ripple-key"
	hdrTime       = "ripple-time"
	hdrAttrPrefix = "ce-"
	hdrAttempts   = "ripple-attempts"     // attempts used before this copy
	hdrNotBefore  = "ripple-not-before"   // unix ms; deliver no earlier
	hdrFirst      = "ripple-first"        // unix ms of the first delivery
	hdrError      = "ripple-error"        // last handler error (dead letters)
	hdrDeadAt     = "ripple-dead-at"      // unix ms (dead letters)
	hdrPriority   = "ripple-priority"     // kept for round trips
	hdrGenerated  = "ripple-generated-id" // the core made the id up
)

// outgoing is one basic.publish.
type outgoing struct {
	exchange, key string
	msg           amqp.Publishing
}

// encode turns a message into a persistent AMQP publishing.
func encode(m *transport.Message) amqp.Publishing {
	h := amqp.Table{hdrTime: m.Time.UTC().Format(time.RFC3339Nano)}
	if m.Key != "" {
		h[hdrKey] = m.Key
	}
	if m.Priority != 0 {
		h[hdrPriority] = int64(m.Priority)
	}
	for k, v := range m.Attrs {
		h[hdrAttrPrefix+k] = v
	}
	if m.Delay > 0 {
		h[hdrNotBefore] = time.Now().Add(m.Delay).UnixMilli()
	}
	return amqp.Publishing{
		Headers:      h,
		ContentType:  m.Attrs["datacontenttype"],
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Type:         m.Type,
		Timestamp:    m.Time,
		Body:         m.Data,
	}
}

// decode reads a message back from an AMQP delivery's fields.
func decode(id, typ string, h amqp.Table, body []byte) transport.Message {
	m := transport.Message{ID: id, Type: typ, Data: bytes.Clone(body), Attrs: map[string]string{}}
	for k, v := range h {
		if a, ok := strings.CutPrefix(k, hdrAttrPrefix); ok {
			if s, ok := v.(string); ok {
				m.Attrs[a] = s
			}
		}
	}
	if s, ok := h[hdrKey].(string); ok {
		m.Key = s
	}
	if s, ok := h[hdrTime].(string); ok {
		m.Time, _ = time.Parse(time.RFC3339Nano, s)
	}
	m.Priority = int(headerInt(h, hdrPriority))
	return m
}

func headerInt(h amqp.Table, k string) int64 {
	switch v := h[k].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	case int16:
		return int64(v)
	case int:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

func headerString(h amqp.Table, k string) string {
	s, _ := h[k].(string)
	return s
}

// Publish implements transport.Driver: one basic.publish per message to
// the namespace's topic exchange, routed by the event type, returning once
// the broker confirmed every one. With a store, an event whose id the
// publisher chose is first claimed there (publish deduplication, see
// package sidestore).
func (d *Driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if d.isClosed() {
		return ErrClosed
	}
	for _, m := range msgs {
		if len(m.Data) > d.maxSize {
			return fmt.Errorf("amqp: event %s is %d bytes, over the max_message_size of %d bytes (raise the broker's max_message_size and the URL's max_message_size, or publish a reference to the payload)", m.ID, len(m.Data), d.maxSize)
		}
	}
	if d.store != nil {
		return d.store.Send(ctx, msgs, d.publish)
	}
	return d.publish(ctx, msgs)
}

// publish sends msgs to the broker and waits for its confirms.
func (d *Driver) publish(ctx context.Context, msgs []*transport.Message) error {
	out := make([]outgoing, len(msgs))
	for i, m := range msgs {
		out[i] = outgoing{exchange: d.exchange, key: m.Type, msg: encode(m)}
	}
	return d.pub.send(ctx, out)
}

// publisher publishes on one confirm channel of the publish connection.
// Concurrent senders share it, so the broker confirms their messages
// together (a group commit).
type publisher struct {
	d *Driver
	// sem serializes basic.publish and channel replacement. It is a
	// channel so that a publisher waits for it within its ctx: a socket
	// write can block while the broker stops reading (a resource alarm).
	sem chan struct{}

	ch     *amqp.Channel
	closes *closeNote
	// plain is a channel without confirms, for bookkeeping (sendNoWait):
	// the broker spends no confirm on it.
	plain *amqp.Channel
}

// closeNote keeps why a channel closed.
type closeNote struct {
	done chan struct{}
	err  *amqp.Error
}

func noteClose(ch *amqp.Channel) *closeNote {
	n := &closeNote{done: make(chan struct{})}
	c := ch.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		n.err = <-c
		close(n.done)
	}()
	return n
}

// reason is why the channel closed, if it said (waiting briefly for the
// notification, which follows the close).
func (n *closeNote) reason() string {
	select {
	case <-n.done:
	case <-time.After(100 * time.Millisecond):
		return ""
	}
	if n.err != nil {
		return ": " + n.err.Error()
	}
	return ""
}

func newPublisher(d *Driver) *publisher {
	return &publisher{d: d, sem: make(chan struct{}, 1)}
}

func (p *publisher) lock(ctx context.Context) error {
	select {
	case p.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *publisher) unlock() { <-p.sem }

// channel returns an open confirm channel; p.sem is held.
func (p *publisher) channel(ctx context.Context) (*amqp.Channel, error) {
	if p.ch != nil && !p.ch.IsClosed() {
		return p.ch, nil
	}
	c, err := p.d.pubConn.get(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := c.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp: opening a publish channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("amqp: enabling publisher confirms: %w", err)
	}
	p.ch = ch
	p.closes = noteClose(ch)
	return ch, nil
}

// send publishes every message and waits for the broker's confirms. It
// returns nil only when each was confirmed; an error wrapping
// transport.ErrOutcomeUnknown when a message was sent but its confirm was
// lost (connection or channel closed, ctx ended while waiting).
func (p *publisher) send(ctx context.Context, out []outgoing) error {
	if len(out) == 0 {
		return nil
	}
	var (
		dcs    []*amqp.DeferredConfirmation
		closes *closeNote
		ch     *amqp.Channel
	)
	for {
		if err := p.d.pubConn.waitUnblocked(ctx); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("amqp: publish: %w", err)
		}
		if err := p.lock(ctx); err != nil {
			return fmt.Errorf("amqp: publish: nothing was sent (another publish is stuck writing to the broker): %w", err)
		}
		var err error
		ch, err = p.channel(ctx)
		if err != nil {
			p.unlock()
			if errors.Is(err, ErrClosed) {
				return err
			}
			return fmt.Errorf("amqp: publish: nothing was sent: %w", err)
		}
		closes = p.closes
		dcs = dcs[:0]
		var perr error
		for _, o := range out {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, o.exchange, o.key, false, false, o.msg)
			if err != nil {
				perr = err
				break
			}
			dcs = append(dcs, dc)
		}
		p.unlock()
		if perr == nil {
			break
		}
		if len(dcs) > 0 {
			return fmt.Errorf("amqp: publish failed after %d of %d messages were sent (%v): %w", len(dcs), len(out), perr, transport.ErrOutcomeUnknown)
		}
		// Nothing sent: the channel closed under us; try a fresh one.
		select {
		case <-ctx.Done():
			return fmt.Errorf("amqp: publish: nothing was sent (%v): %w", perr, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	for _, dc := range dcs {
		select {
		case <-dc.Done():
		case <-ctx.Done():
			return fmt.Errorf("amqp: publish: the broker had not confirmed when the context ended: %w (%w)", transport.ErrOutcomeUnknown, ctx.Err())
		case <-p.d.ctx.Done():
			return fmt.Errorf("amqp: publish: the driver closed before the broker confirmed: %w", transport.ErrOutcomeUnknown)
		}
		if dc.Acked() {
			continue
		}
		if ch.IsClosed() {
			reason := closes.reason()
			if limit, ok := brokerSizeLimit(reason); ok {
				for _, o := range out {
					if len(o.msg.Body) > limit {
						return fmt.Errorf("amqp: publish: the broker refused a %d-byte event over its max_message_size of %d bytes%s; nothing of it was stored (raise max_message_size in rabbitmq.conf, or publish a reference to the payload)", len(o.msg.Body), limit, reason)
					}
				}
			}
			return fmt.Errorf("amqp: publish: the channel closed before the broker confirmed%s: %w", reason, transport.ErrOutcomeUnknown)
		}
		return fmt.Errorf("amqp: publish: the broker refused the message (basic.nack: a queue rejected it, e.g. over its length limit); nothing was stored for it")
	}
	return nil
}

func (p *publisher) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if p.lock(ctx) != nil {
		return
	}
	defer p.unlock()
	if p.ch != nil {
		p.ch.Close()
	}
	if p.plain != nil {
		p.plain.Close()
	}
}

// sendNoWait publishes without waiting for confirms (bookkeeping that
// may be lost, never events).
func (p *publisher) sendNoWait(ctx context.Context, out []outgoing) {
	if p.lock(ctx) != nil {
		return
	}
	defer p.unlock()
	if p.plain == nil || p.plain.IsClosed() {
		c, err := p.d.pubConn.get(ctx)
		if err != nil {
			return
		}
		if p.plain, err = c.Channel(); err != nil {
			p.plain = nil
			return
		}
	}
	for _, o := range out {
		if err := p.plain.PublishWithContext(ctx, o.exchange, o.key, false, false, o.msg); err != nil {
			return
		}
	}
}

var sizeLimitRE = regexp.MustCompile(`larger than configured max size (\d+)`)

// brokerSizeLimit reads the broker's max_message_size from the reason it
// gave for closing a channel over a too-large message.
func brokerSizeLimit(reason string) (int, bool) {
	m := sizeLimitRE.FindStringSubmatch(reason)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}
