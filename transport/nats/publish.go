package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple/transport"
)

// Publish implements transport.Driver. It sends every message with
// PublishMsgAsync and returns once the stream has acknowledged each one.
// A message whose id the publisher chose is first copied to the ids
// stream (see kept).
func (d *Driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if d.isClosed() {
		return ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	nms := make([]*nats.Msg, len(msgs))
	for i, m := range msgs {
		nm, err := d.natsMsg(m)
		if err != nil {
			return err
		}
		if max := d.nc.MaxPayload(); int64(len(nm.Data)+headerSize(nm.Header)+len(nm.Subject)) > max {
			return fmt.Errorf("nats: event %s of %d bytes is larger than the server's max_payload of %d bytes: raise max_payload in the nats-server configuration (up to 64MB) or publish smaller events (store large payloads elsewhere and publish a reference)", m.ID, len(m.Data), max)
		}
		nms[i] = nm
	}
	copies, err := d.writeCopies(ctx, msgs)
	if err != nil {
		return err
	}
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		f, err := d.js.PublishMsgAsync(nms[i], jetstream.WithMsgID(msgID(m)))
		if err != nil {
			// Neither this message nor the ones after it were sent.
			d.dropCopies(copies[i:])
			return d.publishErr(m, err, false)
		}
		futures[i] = f
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				msgs[i].Duplicate = d.kept(ctx, ack, msgs[i], copies[i])
			} else if copies[i] != nil {
				d.confirmCopy(copies[i])
			}
		case err := <-f.Err():
			err = d.publishErr(msgs[i], err, true)
			if !errors.Is(err, transport.ErrOutcomeUnknown) {
				d.dropCopies(copies[i : i+1])
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("nats: publish of event %s: %w (%w)", msgs[i].ID, transport.ErrOutcomeUnknown, ctx.Err())
		}
	}
	return nil
}

// idCopy is where a message's copy went in the ids stream.
type idCopy struct {
	subject string
	seq     uint64
}

// writeCopies stores, before the events themselves, a copy of each
// message whose id the publisher chose (IDGenerated false), so that a
// later duplicate publish can report the message as first stored once
// interest retention has removed it from the events stream. A generated
// id comes again only with a retry of the same publish, whose message is
// the one stored, so it needs no copy. The copies are nil for messages
// without one.
func (d *Driver) writeCopies(ctx context.Context, msgs []*transport.Message) ([]*idCopy, error) {
	copies := make([]*idCopy, len(msgs))
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		if m.IDGenerated {
			continue
		}
		h, err := encode(m)
		if err != nil {
			return nil, fmt.Errorf("nats: event %s: %w", m.ID, err)
		}
		copies[i] = &idCopy{subject: d.idSubject(m)}
		f, err := d.js.PublishMsgAsync(&nats.Msg{Subject: copies[i].subject, Header: h, Data: m.Data}, jetstream.WithExpectStream(d.idsStream()))
		if err != nil {
			d.abandonCopies(ctx, futures, copies)
			return nil, d.copyErr(m, err)
		}
		futures[i] = f
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case ack := <-f.Ok():
			copies[i].seq = ack.Sequence
		case err := <-f.Err():
			futures[i] = nil
			d.abandonCopies(ctx, futures, copies)
			return nil, d.copyErr(msgs[i], err)
		case <-ctx.Done():
			return nil, fmt.Errorf("nats: event %s: writing its copy: %w; the event itself was not sent", msgs[i].ID, ctx.Err())
		}
	}
	return copies, nil
}

// abandonCopies deletes the copies written for a publish that sends no
// event, once their writes are answered (within ctx).
func (d *Driver) abandonCopies(ctx context.Context, futures []jetstream.PubAckFuture, copies []*idCopy) {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	for i, f := range futures {
		if f == nil || copies[i].seq > 0 {
			continue // none, or its answer already taken
		}
		select {
		case ack := <-f.Ok():
			copies[i].seq = ack.Sequence
		case <-f.Err():
		case <-ctx.Done():
			d.dropCopies(copies)
			return
		}
	}
	d.dropCopies(copies)
}

// copyErr explains a copy that could not be written: the event was not
// sent.
func (d *Driver) copyErr(m *transport.Message, err error) error {
	return fmt.Errorf("%w; that was the copy kept in stream %s for duplicate publishes, and the event itself was not sent", d.publishErr(m, err, false), d.idsStream())
}

// confirmCopy records, beside a stored event's copy, that its publish
// stored the event, which tells it from copies whose publish was lost.
// It is not waited for: without it, kept still finds the copy in all but
// the rarest of cases (see kept).
func (d *Driver) confirmCopy(c *idCopy) {
	h := nats.Header{}
	h.Set(hdrStored, strconv.FormatUint(c.seq, 10))
	f, err := d.js.PublishMsgAsync(&nats.Msg{Subject: c.subject, Header: h}, jetstream.WithExpectStream(d.idsStream()))
	if err != nil {
		d.log.Debug("nats: cannot confirm a stored event's copy", "err", err)
		return
	}
	go func() {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			d.log.Debug("nats: cannot confirm a stored event's copy", "err", err)
		}
	}()
}

// dropCopies deletes the copies of messages that were not stored, best
// effort: one left behind is told apart from the stored event's copy by
// its lack of confirmation.
func (d *Driver) dropCopies(copies []*idCopy) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range copies {
		if c != nil && c.seq > 0 {
			_ = d.ids.DeleteMsg(ctx, c.seq)
		}
	}
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

// kept returns the message that a duplicate publish found stored (the
// stream's PubAck said Duplicate, naming the stored message's sequence).
// It is read back from the events stream while a handler still waits for
// it; after that, from the ids stream's copies of the identity, which
// hold the copy written by the publish that stored it (own, this
// publish's copy, is deleted and never chosen):
//
//   - the copy named by a confirmation (written after a publish stored
//     its event, or after an earlier duplicate resolved it), else
//   - the earliest other copy: copies of publishes that did not store
//     their event are deleted when their publish failed, so an earlier
//     unconfirmed one is only left by a process that died between its
//     copy and its publish, or lost the outcome of both its publish and
//     then its confirmation.
//
// A message with a generated id has no copy: the only publish that can
// repeat it is a retry of the same publish, so the message sent is the
// one stored.
func (d *Driver) kept(ctx context.Context, ack *jetstream.PubAck, sent *transport.Message, own *idCopy) *transport.Message {
	same := func(m transport.Message) bool { return m.ID == sent.ID && m.Source() == sent.Source() }
	if own != nil {
		defer d.dropCopies([]*idCopy{own})
	}
	if ack.Sequence > 0 {
		raw, err := d.events.GetMsg(ctx, ack.Sequence)
		if err == nil {
			if m, err := decode(raw.Header, raw.Data); err == nil && same(m) {
				return &m
			}
		}
	}
	if !sent.IDGenerated {
		subject := own.subjectOr(d.idSubject(sent))
		var ownSeq uint64
		if own != nil {
			ownSeq = own.seq
		}
		copies := map[uint64]transport.Message{}
		var earliest, confirmed uint64
		err := each(ctx, d.ids, subject, func(raw *jetstream.RawStreamMsg) bool {
			if v := raw.Header.Get(hdrStored); v != "" {
				if seq, err := strconv.ParseUint(v, 10, 64); err == nil && seq != ownSeq {
					confirmed = seq
				}
				return true
			}
			if raw.Sequence == ownSeq {
				return true
			}
			if m, err := decode(raw.Header, raw.Data); err == nil && same(m) {
				copies[raw.Sequence] = m
				if earliest == 0 {
					earliest = raw.Sequence
				}
			}
			return true
		})
		if err != nil {
			d.log.Warn("nats: cannot read the copies of a duplicate event; reporting the message sent", "event", sent.ID, "err", err)
		}
		if m, ok := copies[confirmed]; ok {
			return &m
		}
		if m, ok := copies[earliest]; ok {
			d.confirmCopy(&idCopy{subject: subject, seq: earliest})
			return &m
		}
		d.log.Warn("nats: a duplicate event's first copy is gone; reporting the message sent", "event", sent.ID, "stream", d.idsStream())
	}
	c := *sent
	c.Duplicate = nil
	return &c
}

// subjectOr returns the copy's subject, or def for no copy.
func (c *idCopy) subjectOr(def string) string {
	if c == nil {
		return def
	}
	return c.subject
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
