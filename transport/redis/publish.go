package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Limits of one publish script call. Concurrent Publish calls are grouped
// into one call up to these sizes.
const (
	maxBatchMessages = 512
	maxBatchBytes    = 4 << 20
)

// publishTimeout bounds one batched publish call. It is not the caller's
// ctx because the call carries other callers' messages too.
const publishTimeout = 30 * time.Second

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

type pubReq struct {
	args []any
	n    int
	size int
	done chan error
}

// publisher groups concurrent Publish calls: while one script call is in
// flight, later calls queue, and the next call carries all of them. A lone
// publisher pays one round trip; many share one.
type publisher struct {
	d       *Driver
	mu      sync.Mutex
	queue   []*pubReq
	running bool
	idle    *sync.Cond
}

// Publish stores messages durably: it returns nil once Redis has run the
// publish script, which appends each message to the stream (or delayed
// set) of every matching subscription in one atomic step.
func (d *Driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if d.isClosed() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	req := &pubReq{done: make(chan error, 1), n: len(msgs)}
	for _, m := range msgs {
		if m.ID == "" || m.Type == "" {
			return fmt.Errorf("redis transport: message needs an id and a type (got id %q, type %q)", m.ID, m.Type)
		}
		if d.maxSize > 0 && len(m.Data) > d.maxSize {
			return fmt.Errorf("redis transport: message %s data is %d bytes, over the %d-byte limit", m.ID, len(m.Data), d.maxSize)
		}
		req.args = appendMessage(req.args, m)
		req.size += len(m.Data) + 256
	}
	d.pub.enqueue(req)
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		// The batch may still be stored; the caller must treat the
		// outcome as unknown, as with any timed-out write.
		return ctx.Err()
	}
}

func appendMessage(args []any, m *transport.Message) []any {
	delay := int64(0)
	if m.Delay > 0 {
		delay = max(m.Delay.Milliseconds(), 1)
	}
	nf := 6 + 2*len(m.Attrs) + 2
	if m.Key != "" {
		nf += 2
	}
	args = append(args, delay, nf, fieldID, m.ID, fieldType, m.Type, fieldTime, m.Time.UTC().Format(time.RFC3339Nano))
	if m.Key != "" {
		args = append(args, fieldKey, m.Key)
	}
	for k, v := range m.Attrs {
		args = append(args, attrPrefix+k, v)
	}
	return append(args, fieldData, m.Data)
}

func (p *publisher) enqueue(req *pubReq) {
	p.mu.Lock()
	p.queue = append(p.queue, req)
	if !p.running {
		p.running = true
		go p.flush()
	}
	p.mu.Unlock()
}

// flush runs batches until the queue is empty.
func (p *publisher) flush() {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.running = false
			if p.idle != nil {
				p.idle.Broadcast()
			}
			p.mu.Unlock()
			return
		}
		n, msgs, size := 0, 0, 0
		for n < len(p.queue) && (n == 0 || msgs+p.queue[n].n <= maxBatchMessages && size+p.queue[n].size <= maxBatchBytes) {
			msgs += p.queue[n].n
			size += p.queue[n].size
			n++
		}
		batch := p.queue[:n:n]
		p.queue = p.queue[n:]
		p.mu.Unlock()

		args := make([]any, 0, 2+msgs*12)
		args = append(args, p.d.prefix, p.d.ret.dedup.Milliseconds())
		for _, r := range batch {
			args = append(args, r.args...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		err := publishScript.Run(ctx, p.d.client, nil, args...).Err()
		cancel()
		if err != nil {
			err = fmt.Errorf("redis transport: publish: %w", err)
		}
		for _, r := range batch {
			r.done <- err
		}
	}
}

// wait blocks until no batch is in flight.
func (p *publisher) wait() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idle == nil {
		p.idle = sync.NewCond(&p.mu)
	}
	for p.running {
		p.idle.Wait()
	}
}

// parseEntry turns a stream entry's fields into a message. ok is false for
// an entry Ripple did not write.
func parseEntry(fields map[string]string) (m transport.Message, attempts int, first int64, ok bool) {
	m.ID, m.Type = fields[fieldID], fields[fieldType]
	if m.ID == "" || m.Type == "" {
		return m, 0, 0, false
	}
	for k, v := range fields {
		switch k {
		case fieldID, fieldType:
		case fieldTime:
			m.Time, _ = time.Parse(time.RFC3339Nano, v)
		case fieldKey:
			m.Key = v
		case fieldData:
			m.Data = []byte(v)
		case fieldAttempts:
			attempts, _ = strconv.Atoi(v)
		case fieldFirst:
			first, _ = strconv.ParseInt(v, 10, 64)
		default:
			if name, isAttr := cutPrefix(k, attrPrefix); isAttr {
				if m.Attrs == nil {
					m.Attrs = make(map[string]string)
				}
				m.Attrs[name] = v
			}
		}
	}
	return m, attempts, first, true
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
