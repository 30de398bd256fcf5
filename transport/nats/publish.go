package nats

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple/transport"
)

// Publish implements transport.Driver. It sends every message with
// PublishMsgAsync and returns once the stream has acknowledged each one.
func (d *Driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if d.isClosed() {
		return ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		nm, err := d.natsMsg(m)
		if err != nil {
			return err
		}
		if max := d.nc.MaxPayload(); int64(len(nm.Data)+headerSize(nm.Header)+len(nm.Subject)) > max {
			return fmt.Errorf("nats: event %s of %d bytes is larger than the server's max_payload of %d bytes: raise max_payload in the nats-server configuration (up to 64MB) or publish smaller events (store large payloads elsewhere and publish a reference)", m.ID, len(m.Data), max)
		}
		f, err := d.js.PublishMsgAsync(nm, jetstream.WithMsgID(msgID(m)))
		if err != nil {
			return d.publishErr(m, err, false)
		}
		futures[i] = f
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				msgs[i].Duplicate = d.kept(ctx, ack, msgs[i])
			}
		case err := <-f.Err():
			return d.publishErr(msgs[i], err, true)
		case <-ctx.Done():
			return fmt.Errorf("nats: publish of event %s: %w (%w)", msgs[i].ID, transport.ErrOutcomeUnknown, ctx.Err())
		}
	}
	return nil
}

// natsMsg builds the NATS message for m: on its type's subject, or, when
// delayed, a scheduled message that the server moves to that subject.
func (d *Driver) natsMsg(m *transport.Message) (*nats.Msg, error) {
	h, err := encode(m)
	if err != nil {
		return nil, fmt.Errorf("nats: event %s: %w", m.ID, err)
	}
	subj := d.eventSubject(m.Type)
	if m.Delay > 0 {
		subj = d.schedule(h, time.Now().Add(m.Delay), subj, "ev."+m.Type)
	}
	return &nats.Msg{Subject: subj, Header: h, Data: m.Data}, nil
}

// scheduleHorizon is the latest time handed to the server's scheduler,
// which keeps times as int64 nanoseconds (good until 2262). A message due
// later fires at the horizon carrying its real time in hdrDue, and is
// scheduled again then (see subscription.delivery).
var scheduleHorizon = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)

// schedule turns h into the headers of a message the server stores on a
// schedule subject and moves to target at due; it returns the schedule
// subject. kind names the target for Stats ("ev.TYPE" or "rq.TOKEN").
func (d *Driver) schedule(h nats.Header, due time.Time, target, kind string) string {
	if due.After(scheduleHorizon) {
		h.Set(hdrDue, formatTime(due))
		due = scheduleHorizon
	}
	h.Set(hdrSchedule, "@at "+formatTime(due))
	h.Set(hdrTarget, target)
	return d.scheduleSubject(kind)
}

func headerSize(h nats.Header) int {
	n := 12
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// kept returns the message that a duplicate publish found stored, read
// back by its sequence; when the stream no longer holds it (every handler
// finished it and interest retention removed it) it returns the message
// sent, which has the same source and id.
func (d *Driver) kept(ctx context.Context, ack *jetstream.PubAck, sent *transport.Message) *transport.Message {
	if ack.Sequence > 0 {
		raw, err := d.events.GetMsg(ctx, ack.Sequence)
		if err == nil {
			if m, err := decode(raw.Header, raw.Data); err == nil && m.ID == sent.ID && m.Source() == sent.Source() {
				return &m
			}
		}
	}
	c := *sent
	c.Duplicate = nil
	return &c
}

// publishErr explains a failed publish; sent tells whether the message
// may have reached the server.
func (d *Driver) publishErr(m *transport.Message, err error, sent bool) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("nats: event %s of %d bytes is larger than the server's max_payload of %d bytes: raise max_payload in the nats-server configuration or publish smaller events: %w", m.ID, len(m.Data), d.nc.MaxPayload(), err)
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("nats: no JetStream stream took event %s (%w); nothing was stored: is stream %s still there and its server reachable? Opening a bus creates it", m.ID, err, d.eventsStream())
	case errors.As(err, &apiErr):
		switch apiErr.ErrorCode {
		case 10023, 10047, 10028:
			return fmt.Errorf("nats: event %s: %w: JetStream refused the write (%v); free disk space or raise the account's JetStream limits", m.ID, transport.ErrStorageFull, err)
		case jetstream.JSErrCodeStreamMessageExceedsMaximum:
			return fmt.Errorf("nats: event %s is larger than stream %s accepts (%v); publish smaller events", m.ID, d.eventsStream(), err)
		}
		return fmt.Errorf("nats: JetStream refused event %s: %w", m.ID, err)
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, jetstream.ErrAsyncPublishTimeout):
		if sent {
			return fmt.Errorf("nats: publish of event %s: %w (%v)", m.ID, transport.ErrOutcomeUnknown, err)
		}
	}
	return fmt.Errorf("nats: publish of event %s: %w", m.ID, err)
}
