package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

// Limits of one batched script call (publish or settle). Concurrent
// calls are grouped into one script call up to these sizes.
const (
	maxBatchItems = 512
	maxBatchBytes = 4 << 20
)

// batchTimeout bounds one batched script call run in the background. It
// is not a caller's ctx because the call carries other callers' jobs too.
const batchTimeout = 30 * time.Second

// batchSlots is how many batches of publishes and settlements a driver
// has in flight at once.
const batchSlots = 2

// publishHead is how many arguments of the publish script precede the
// messages: the prefix (see publishScript).
const publishHead = 1

// Stream entry fields. A Ripple entry starts with id and type; the
// CloudEvents attributes are stored under "ce_" plus their name, as in
// CloudEvents' binary content mode.
const (
	fieldID       = "id"
	fieldType     = "type"
	fieldTime     = "time"
	fieldKey      = "key"
	fieldData     = "data"
	fieldAttempts = "a" // attempts used before this entry was (re)added
	fieldFirst    = "f" // first delivery, unix ms
	attrPrefix    = "ce_"
)

// Publish stores messages durably: it returns nil once Redis has appended
// each message to the stream (or delayed set) of every matching
// subscription. Most messages take the direct path (plain XADDs, see
// route.go); delayed ones and those with an id of the publisher's own,
// which need a dedup record, go through the publish script. When ctx ends
// while the call waits for Redis, whether the messages were stored is
// unknown, as with any interrupted write.
func (d *Driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if d.isClosed() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var direct, script *job
	for _, m := range msgs {
		if m.ID == "" || m.Type == "" {
			return fmt.Errorf("redis transport: message needs an id and a type (got id %q, type %q)", m.ID, m.Type)
		}
		if d.maxSize > 0 && len(m.Data) > d.maxSize {
			return fmt.Errorf("redis transport: message %s data is %d bytes, over the %d-byte limit", m.ID, len(m.Data), d.maxSize)
		}
		if d.isDirect(m) {
			if direct == nil {
				direct = &job{direct: make([]directMsg, 0, len(msgs))}
			}
			args := make([]any, xaddHead, xaddHead+10+2*len(m.Attrs))
			args[0], args[2], args[3] = "xadd", "nomkstream", "*"
			direct.direct = append(direct.direct, directMsg{typ: m.Type, args: appendFields(args, m), msg: m})
			direct.n++
			direct.size += len(m.Data) + 256
			continue
		}
		if script == nil {
			// The prefix, the first argument, is filled in by execBatch,
			// so a batch of one job uses its slice as it is.
			script = &job{args: make([]any, publishHead, publishHead+20*len(msgs)), nonce: randHex(8)}
		}
		script.args = appendMessage(script.args, m, d.ret.DedupWindow, script.nonce)
		script.msgs = append(script.msgs, m)
		script.n++
		script.size += len(m.Data) + 256
	}
	var directErr, scriptErr error
	if direct != nil {
		directErr = queuedErr(d.direct.do(ctx, direct))
	}
	if script != nil {
		scriptErr = queuedErr(d.batch.do(ctx, script))
	}
	return errors.Join(directErr, scriptErr)
}

// queuedErr wraps the error of a publish whose ctx ended while it waited
// for a batch (the combiner returns ctx's error as it is): the batch may
// still send it.
func queuedErr(err error) error {
	if err == context.Canceled || err == context.DeadlineExceeded {
		return fmt.Errorf("redis transport: publish: %w while the publish waited to be sent with other calls: %w", err, transport.ErrOutcomeUnknown)
	}
	return err
}

// publishErr wraps a failed publish's error that stored nothing, or may
// have stored it (see outcomeUnknown), with what to do when Redis is
// full. recorded tells whether the publish writes dedup records, which
// make publishing again safe.
func publishErr(err error, recorded bool) error {
	switch {
	case isOOM(err):
		return fmt.Errorf("redis transport: publish: Redis is full (maxmemory), nothing was stored: %w; free memory (let handlers drain, shorten retention) or raise maxmemory: %w", err, transport.ErrStorageFull)
	case outcomeUnknown(err) && recorded:
		return fmt.Errorf("redis transport: publish: the connection failed after the publish was sent (%w): %w", err, transport.ErrOutcomeUnknown)
	case outcomeUnknown(err):
		return fmt.Errorf("redis transport: publish: the connection failed after the publish was sent (%w): %w; but this event has no dedup record in Redis (Ripple generated its id, or the dedup window is off), so publishing it again may store it twice: give events an id of your own (WithID) when that matters, or make handlers Idempotent", err, transport.ErrOutcomeUnknown)
	}
	return fmt.Errorf("redis transport: publish: %w", err)
}

// outcomeUnknown reports whether err may have come after a command reached
// Redis: the connection broke or timed out, or ctx ended, without a reply.
// A reply from Redis (an error reply included) is an outcome, and a dial
// that failed or a pool that had no connection sent nothing.
func outcomeUnknown(err error) bool {
	var reply goredis.Error
	var op *net.OpError
	switch {
	case err == nil, errors.As(err, &reply):
		return false
	case errors.As(err, &op) && op.Op == "dial":
		return false
	case errors.Is(err, goredis.ErrPoolTimeout), errors.Is(err, goredis.ErrClosed), errors.Is(err, ErrClosed):
		return false
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.As(err, &ne)
}

// isOOM reports whether err is a full Redis's refusal of a write. A
// MULTI/EXEC whose EXEC arrives once Redis is full is refused as a whole,
// with EXECABORT naming the OOM.
func isOOM(err error) bool {
	return goredis.HasErrorPrefix(err, "OOM") ||
		goredis.HasErrorPrefix(err, "EXECABORT") && strings.Contains(err.Error(), "because of: OOM")
}

// partialPublishErr wraps the error of a publish that failed after Redis
// had stored part of it (some events, or an event for some of its
// subscriptions), so that the caller does not take it for one that
// stored nothing.
func partialPublishErr(err error) error {
	switch {
	case isOOM(err):
		return fmt.Errorf("redis transport: publish: Redis is full (maxmemory) and refused this publish after storing part of it (some events, or an event for some of its handlers): %w; publishing it again would deliver that part twice; free memory (let handlers drain, shorten retention) or raise maxmemory: %w", err, transport.ErrStorageFull)
	case outcomeUnknown(err):
		return fmt.Errorf("redis transport: publish: failed after Redis stored part of it (some events, or an event for some of its handlers), and the connection failed before the rest was answered (%w): %w", err, transport.ErrOutcomeUnknown)
	}
	return fmt.Errorf("redis transport: publish: failed after Redis stored part of it (some events, or an event for some of its handlers): %w", err)
}

// appendMessage appends one message's publish-script arguments: its delay,
// how long to keep its dedup record (0: none), its identity, the nonce of
// the publish call, its field count and fields.
func appendMessage(args []any, m *transport.Message, window time.Duration, nonce string) []any {
	delay := int64(0)
	if m.Delay > 0 {
		delay = max(m.Delay.Milliseconds(), 1)
	}
	if m.IDGenerated {
		// Only a retry of this publish can repeat the id: a short
		// record suffices and keeps Redis memory per event small.
		window = min(window, transport.GeneratedIDWindow)
	}
	ttl := int64(0)
	if window > 0 {
		ttl = max(window.Milliseconds(), 1)
	}
	nf := 6 + 2*len(m.Attrs) + 2
	if m.Key != "" {
		nf += 2
	}
	return appendFields(append(args, delay, ttl, transport.IdentityKey(m.Source(), m.ID), nonce, nf), m)
}

// appendFields appends a message's stream entry fields, id and type first.
func appendFields(f []any, m *transport.Message) []any {
	f = append(f, fieldID, m.ID, fieldType, m.Type, fieldTime, m.Time.UTC().Format(time.RFC3339Nano))
	if m.Key != "" {
		f = append(f, fieldKey, m.Key)
	}
	for k, v := range m.Attrs {
		f = append(f, attrField(k), v)
	}
	return append(f, fieldData, m.Data)
}

// attrField is the stream field of a CloudEvents attribute: its name with
// attrPrefix. The attributes every event carries have theirs spelled out,
// which spares a string allocation each per publish.
func attrField(name string) string {
	switch name {
	case "source":
		return "ce_source"
	case "datacontenttype":
		return "ce_datacontenttype"
	case "dataversion":
		return "ce_dataversion"
	case "correlationid":
		return "ce_correlationid"
	case "causationid":
		return "ce_causationid"
	case "traceparent":
		return "ce_traceparent"
	}
	return attrPrefix + name
}

// parseEntry turns a stream entry's fields, a flat list of names and
// values as Redis sends them, into a message. ok is false for an entry
// Ripple did not write.
func parseEntry(fields []any) (m transport.Message, attempts int, first int64, ok bool) {
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		switch k {
		case fieldID:
			m.ID = v
		case fieldType:
			m.Type = v
		case fieldTime:
			m.Time, _ = time.Parse(time.RFC3339Nano, v)
		case fieldKey:
			m.Key = v
		case fieldData:
			m.Data = []byte(v)
		case fieldAttempts:
			// Only Ripple writes it, never below 0; an entry written by
			// hand with less would run forever short of MaxAttempts.
			attempts, _ = strconv.Atoi(v)
			attempts = max(attempts, 0)
		case fieldFirst:
			first, _ = strconv.ParseInt(v, 10, 64)
		default:
			if name, isAttr := cutPrefix(k, attrPrefix); isAttr {
				if m.Attrs == nil {
					m.Attrs = make(map[string]string, countAttrs(fields[i:]))
				}
				m.Attrs[name] = v
			}
		}
	}
	if m.ID == "" || m.Type == "" {
		return m, 0, 0, false
	}
	return m, attempts, first, true
}

// countAttrs counts the attribute fields in a flat field list, so that
// the attribute map is made at its final size.
func countAttrs(fields []any) int {
	n := 0
	for i := 0; i < len(fields); i += 2 {
		if k, _ := fields[i].(string); len(k) > len(attrPrefix) && k[:len(attrPrefix)] == attrPrefix {
			n++
		}
	}
	return n
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return s, false
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
