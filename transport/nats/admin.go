package nats

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple/transport"
)

var (
	_ transport.Inspector       = (*Driver)(nil)
	_ transport.DeadLetterQueue = (*Driver)(nil)
	_ transport.Replayer        = (*Driver)(nil)
	_ transport.Unsubscriber    = (*Driver)(nil)
	_ transport.Claimer         = (*Driver)(nil)
	_ transport.RateLimiter     = (*Driver)(nil)
	_ transport.Pauser          = (*Driver)(nil)
)

// handlerInfo returns a handler's consumer info, or an error wrapping
// transport.ErrNotFound.
func (d *Driver) handlerInfo(ctx context.Context, handler string) (*jetstream.ConsumerInfo, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	c, err := d.js.Consumer(ctx, d.eventsStream(), consumerName(handler))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("nats: handler %q: %w", handler, transport.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("nats: handler %q: %w", handler, err)
	}
	info := c.CachedInfo()
	if info.Config.Metadata[metaHandler] != handler {
		return nil, fmt.Errorf("nats: handler %q: %w (consumer %s is not Ripple's)", handler, transport.ErrNotFound, consumerName(handler))
	}
	return info, nil
}

// subjectCount counts the messages of stream s on subjects matching filter.
func subjectCount(ctx context.Context, s jetstream.Stream, filter string) (int64, error) {
	if s == nil {
		return 0, nil
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return int64(n), nil
}

// Stats implements transport.Inspector from consumer info: Waiting is the
// consumer's pending count, Active its acknowledgement-pending count
// (leased deliveries and retries waiting for their backoff), Delayed the
// scheduled messages for the handler, Completed and Dead the handler's
// retained history and dead letters.
func (d *Driver) Stats(ctx context.Context) ([]transport.Stats, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	// Completions recorded in the background are counted once sent.
	if err := d.flush(ctx); err != nil {
		return nil, fmt.Errorf("nats: stats: %w", err)
	}
	var out []transport.Stats
	lister := d.events.ListConsumers(ctx)
	var infos []*jetstream.ConsumerInfo
	for info := range lister.Info() {
		if info.Config.Metadata[metaHandler] != "" {
			infos = append(infos, info)
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("nats: listing consumers of %s: %w", d.eventsStream(), err)
	}
	for _, info := range infos {
		h := info.Config.Metadata[metaHandler]
		pattern := info.Config.Metadata[metaPattern]
		tok := token(h)
		st := transport.Stats{
			Handler: h, Pattern: pattern,
			Waiting: int64(info.NumPending),
			Active:  int64(info.NumAckPending),
			Paused:  info.Paused,
		}
		var err error
		var delayed, direct int64
		if delayed, err = subjectCount(ctx, d.events, d.prefix+".sched.*.ev."+pattern); err == nil {
			direct, err = subjectCount(ctx, d.events, d.prefix+".sched.*.rq."+tok)
		}
		if err == nil {
			st.Delayed = delayed + direct
			st.Completed, err = subjectCount(ctx, d.done, d.doneSubject(tok))
		}
		if err == nil {
			st.Dead, err = subjectCount(ctx, d.dead, d.deadSubject(tok))
		}
		if err == nil {
			st.Failed, _, err = d.counter(ctx, "failed."+tok)
		}
		if err != nil {
			return nil, fmt.Errorf("nats: stats of handler %q: %w", h, err)
		}
		if st.Waiting > 0 {
			st.OldestWaiting = d.oldestWaiting(ctx, info, pattern, tok)
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b transport.Stats) int { return strings.Compare(a.Handler, b.Handler) })
	return out, nil
}

// oldestWaiting is the age of the first message after the consumer's
// delivered position on either of its subjects.
func (d *Driver) oldestWaiting(ctx context.Context, info *jetstream.ConsumerInfo, pattern, tok string) time.Duration {
	var oldest time.Time
	for _, subj := range []string{d.eventSubject(pattern), d.requeueSubject(tok)} {
		m, err := d.events.GetMsg(ctx, info.Delivered.Stream+1, jetstream.WithGetMsgSubject(subj))
		if err == nil && (oldest.IsZero() || m.Time.Before(oldest)) {
			oldest = m.Time
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return max(time.Since(oldest), 0)
}

// each calls fn for every message of stream s on subject subj, oldest
// first, until fn returns false.
func each(ctx context.Context, s jetstream.Stream, subj string, fn func(*jetstream.RawStreamMsg) bool) error {
	if s == nil {
		return nil
	}
	seq := uint64(1)
	for {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !fn(m) {
			return nil
		}
		seq = m.Sequence + 1
	}
}

// deadLetter reads a dead-letter record.
func (d *Driver) deadLetter(handler string, m *jetstream.RawStreamMsg) (transport.DeadLetter, error) {
	msg, err := decode(m.Header, m.Data)
	if err != nil {
		return transport.DeadLetter{}, err
	}
	errText, _ := strconv.Unquote(m.Header.Get(hdrError))
	attempts, _ := strconv.Atoi(m.Header.Get(hdrAttempts))
	return transport.DeadLetter{
		Message: msg, Handler: handler, Attempts: attempts, Error: errText,
		FirstAttempt: parseTime(m.Header.Get(hdrFirst)),
		DeadAt:       cmpTime(parseTime(m.Header.Get(hdrDeadAt)), m.Time),
	}, nil
}

func cmpTime(a, b time.Time) time.Time {
	if a.IsZero() {
		return b
	}
	return a
}

// DeadLetters implements transport.DeadLetterQueue.
func (d *Driver) DeadLetters(ctx context.Context, handler string, limit int) ([]transport.DeadLetter, error) {
	if _, err := d.handlerInfo(ctx, handler); err != nil {
		return nil, err
	}
	var out []transport.DeadLetter
	err := each(ctx, d.dead, d.deadSubject(token(handler)), func(m *jetstream.RawStreamMsg) bool {
		if dl, err := d.deadLetter(handler, m); err == nil {
			out = append(out, dl)
		}
		return limit <= 0 || len(out) < limit
	})
	if err != nil {
		return nil, fmt.Errorf("nats: dead letters of %q: %w", handler, err)
	}
	return out, nil
}

// moveBack puts a stored copy (a dead letter or a completed record) back
// on the handler's requeue subject with a fresh attempt budget, then
// deletes the copy. Its Nats-Msg-Id names the copy, so that two processes
// moving the same copy at once store it once; only the one whose delete
// succeeds reports it moved.
func (d *Driver) moveBack(ctx context.Context, from jetstream.Stream, tok string, m *jetstream.RawStreamMsg) (bool, error) {
	h := copyHeader(m.Header)
	h.Del(hdrFirst)
	h.Del(hdrBase)
	id := fmt.Sprintf("ripple-move:%s:%d", from.CachedInfo().Config.Name, m.Sequence)
	if _, err := d.js.PublishMsg(ctx, &nats.Msg{Subject: d.requeueSubject(tok), Header: h, Data: m.Data}, jetstream.WithMsgID(id)); err != nil {
		return false, err
	}
	if err := from.DeleteMsg(ctx, m.Sequence); err != nil {
		if gone(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// gone reports an error deleting a message that is already deleted.
func gone(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == 10057 || apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound) {
		return true
	}
	// DeleteMsg reports the server's refusal as text only.
	return errors.Is(err, jetstream.ErrMsgNotFound) ||
		errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) && strings.Contains(err.Error(), "err_code=10057")
}

// selectDead calls fn for each dead letter of handler whose id is in ids
// (every one when ids is empty).
func (d *Driver) selectDead(ctx context.Context, handler string, ids []string, fn func(*jetstream.RawStreamMsg) (bool, error)) (int, error) {
	if _, err := d.handlerInfo(ctx, handler); err != nil {
		return 0, err
	}
	var picked []*jetstream.RawStreamMsg
	err := each(ctx, d.dead, d.deadSubject(token(handler)), func(m *jetstream.RawStreamMsg) bool {
		msg, err := decode(m.Header, m.Data)
		if err == nil && (len(ids) == 0 || slices.Contains(ids, msg.ID)) {
			picked = append(picked, m)
		}
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("nats: dead letters of %q: %w", handler, err)
	}
	n := 0
	for _, m := range picked {
		done, err := fn(m)
		if err != nil {
			return n, fmt.Errorf("nats: dead letter of %q: %w", handler, err)
		}
		if done {
			n++
		}
	}
	return n, nil
}

// Requeue implements transport.DeadLetterQueue.
func (d *Driver) Requeue(ctx context.Context, handler string, ids []string) (int, error) {
	tok := token(handler)
	return d.selectDead(ctx, handler, ids, func(m *jetstream.RawStreamMsg) (bool, error) {
		return d.moveBack(ctx, d.dead, tok, m)
	})
}

// Purge implements transport.DeadLetterQueue.
func (d *Driver) Purge(ctx context.Context, handler string, ids []string) (int, error) {
	return d.selectDead(ctx, handler, ids, func(m *jetstream.RawStreamMsg) (bool, error) {
		if err := d.dead.DeleteMsg(ctx, m.Sequence); err != nil {
			if gone(err) {
				return false, nil
			}
			return false, err
		}
		return true, nil
	})
}

// Replay implements transport.Replayer from the handler's retained
// history: every completed record and dead letter whose original was
// stored at or after since goes back on the handler's requeue subject.
func (d *Driver) Replay(ctx context.Context, handler string, since time.Time) (int, error) {
	if _, err := d.handlerInfo(ctx, handler); err != nil {
		return 0, err
	}
	tok := token(handler)
	n := 0
	for _, src := range []struct {
		s    jetstream.Stream
		subj string
	}{{d.done, d.doneSubject(tok)}, {d.dead, d.deadSubject(tok)}} {
		var picked []*jetstream.RawStreamMsg
		err := each(ctx, src.s, src.subj, func(m *jetstream.RawStreamMsg) bool {
			if !parseTime(m.Header.Get(hdrPublished)).Before(since) {
				picked = append(picked, m)
			}
			return true
		})
		if err != nil {
			return n, fmt.Errorf("nats: replay of %q: %w", handler, err)
		}
		for _, m := range picked {
			moved, err := d.moveBack(ctx, src.s, tok, m)
			if err != nil {
				return n, fmt.Errorf("nats: replay of %q: %w", handler, err)
			}
			if moved {
				n++
			}
		}
	}
	return n, nil
}

// Unsubscribe implements transport.Unsubscriber: it deletes the handler's
// consumer (interest retention then drops what was queued only for it),
// its scheduled messages, history, dead letters and counters.
func (d *Driver) Unsubscribe(ctx context.Context, handler string) error {
	if _, err := d.handlerInfo(ctx, handler); err != nil {
		return err
	}
	tok := token(handler)
	if err := d.js.DeleteConsumer(ctx, d.eventsStream(), consumerName(handler)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("nats: unsubscribe %q: %w", handler, err)
	}
	var errs []error
	errs = append(errs, d.events.Purge(ctx, jetstream.WithPurgeSubject(d.prefix+".sched.*.rq."+tok)))
	errs = append(errs, d.events.Purge(ctx, jetstream.WithPurgeSubject(d.requeueSubject(tok))))
	if d.done != nil {
		errs = append(errs, d.done.Purge(ctx, jetstream.WithPurgeSubject(d.doneSubject(tok))))
	}
	if d.dead != nil {
		errs = append(errs, d.dead.Purge(ctx, jetstream.WithPurgeSubject(d.deadSubject(tok))))
	}
	for _, k := range []string{"failed." + tok, "rate." + tok} {
		if err := d.state.Purge(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("nats: unsubscribe %q: the consumer is deleted but cleaning its history failed: %w", handler, err)
	}
	return nil
}

// Pause implements transport.Pauser with JetStream's consumer pause.
func (d *Driver) Pause(ctx context.Context, handler string) error {
	if _, err := d.handlerInfo(ctx, handler); err != nil {
		return err
	}
	if _, err := d.js.PauseConsumer(ctx, d.eventsStream(), consumerName(handler), time.Now().AddDate(100, 0, 0)); err != nil {
		return fmt.Errorf("nats: pause %q: %w", handler, err)
	}
	return nil
}

// Resume implements transport.Pauser.
func (d *Driver) Resume(ctx context.Context, handler string) error {
	if _, err := d.handlerInfo(ctx, handler); err != nil {
		return err
	}
	if _, err := d.js.ResumeConsumer(ctx, d.eventsStream(), consumerName(handler)); err != nil {
		return fmt.Errorf("nats: resume %q: %w", handler, err)
	}
	return nil
}

// counter reads an integer kept in the state bucket.
func (d *Driver) counter(ctx context.Context, key string) (int64, uint64, error) {
	e, err := d.state.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	n, _ := strconv.ParseInt(string(e.Value()), 10, 64)
	return n, e.Revision(), nil
}

// countFailure adds one to a handler's failed-attempt counter; a failure
// to count is logged, as it only makes Stats.Failed low.
func (d *Driver) countFailure(ctx context.Context, tok string) {
	key := "failed." + tok
	for range 20 {
		n, rev, err := d.counter(ctx, key)
		if err != nil {
			break
		}
		v := []byte(strconv.FormatInt(n+1, 10))
		if rev == 0 {
			_, err = d.state.Create(ctx, key, v)
		} else {
			_, err = d.state.Update(ctx, key, v, rev)
		}
		if err == nil {
			return
		}
		if !isConflict(err) {
			break
		}
	}
	d.log.Warn("nats: cannot count a failed attempt", "handler", handlerOf(tok))
}

// isConflict reports a compare-and-set that lost to another writer.
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}

// claimKey is the key of an idempotency claim.
func claimKey(handler, eventID string) string {
	return token(handler) + "." + base64.RawURLEncoding.EncodeToString([]byte(eventID))
}

// claim is the value of an idempotency claim.
type claim struct {
	Done  bool  `json:"done,omitempty"`
	Until int64 `json:"until,omitempty"` // unix nanoseconds the claim is held until
}

// Claim implements transport.Claimer with the claims bucket: Create takes
// a free claim, Update with the read revision takes an expired one.
func (d *Driver) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	if d.isClosed() {
		return 0, ErrClosed
	}
	key := claimKey(handler, eventID)
	val, _ := json.Marshal(claim{Until: time.Now().Add(lease).UnixNano()})
	for range 50 {
		e, err := d.claims.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = d.claims.Create(ctx, key, val)
		case err != nil:
			return 0, fmt.Errorf("nats: claim for %q: %w", handler, err)
		default:
			var c claim
			_ = json.Unmarshal(e.Value(), &c)
			if c.Done {
				return transport.Done, nil
			}
			if time.Now().UnixNano() < c.Until {
				return transport.Busy, nil
			}
			_, err = d.claims.Update(ctx, key, val, e.Revision())
		}
		if err == nil {
			return transport.Claimed, nil
		}
		if !isConflict(err) {
			return 0, fmt.Errorf("nats: claim for %q: %w", handler, err)
		}
	}
	return transport.Busy, nil
}

// Finish implements transport.Claimer.
func (d *Driver) Finish(ctx context.Context, handler, eventID string, success bool) error {
	if d.isClosed() {
		return ErrClosed
	}
	key := claimKey(handler, eventID)
	if success {
		v, _ := json.Marshal(claim{Done: true})
		if _, err := d.claims.Put(ctx, key, v); err != nil {
			return fmt.Errorf("nats: finishing claim for %q: %w", handler, err)
		}
		return nil
	}
	if err := d.claims.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("nats: dropping claim for %q: %w", handler, err)
	}
	return nil
}

// Reserve implements transport.RateLimiter: the handler's key in the
// state bucket holds the start times of the last n reservations; a new
// one starts no earlier than per after the n-th most recent, and the key
// is updated by compare-and-set, so every process sees one sliding window.
func (d *Driver) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	if d.isClosed() {
		return 0, ErrClosed
	}
	if n <= 0 || per <= 0 {
		return 0, nil
	}
	key := "rate." + token(handler)
	for range 100 {
		var starts []int64
		var rev uint64
		e, err := d.state.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return 0, fmt.Errorf("nats: rate limit of %q: %w", handler, err)
		default:
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &starts)
		}
		now := time.Now().UnixNano()
		start := now
		if len(starts) >= n {
			start = max(now, starts[len(starts)-n]+int64(per))
		}
		starts = append(starts, start)
		if len(starts) > n {
			starts = starts[len(starts)-n:]
		}
		v, _ := json.Marshal(starts)
		if rev == 0 {
			_, err = d.state.Create(ctx, key, v)
		} else {
			_, err = d.state.Update(ctx, key, v, rev)
		}
		if err == nil {
			return time.Duration(start - now), nil
		}
		if !isConflict(err) {
			return 0, fmt.Errorf("nats: rate limit of %q: %w", handler, err)
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("nats: rate limit of %q: too much contention on its key", handler)
}
