package redis

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Faults of a cutProxy.
const (
	passAll       = iota
	cutReply      // a command reaches Redis; its reply is lost with the connection (then pass)
	dropRequest   // the next XADD is lost with its connection (then pass)
	cutThenRefuse // as cutReplies, and then every connection is refused
)

// cutProxy is a TCP proxy in front of Redis that loses commands or
// replies by closing connections (see the faults above).
type cutProxy struct {
	l     net.Listener
	fault atomic.Int32

	mu    sync.Mutex
	conns []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l}
	t.Cleanup(p.close)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go p.pipe(u, c, false)
			go p.pipe(c, u, true)
		}
	}()
	return p
}

func (p *cutProxy) pipe(dst, src net.Conn, replies bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			switch f := p.fault.Load(); {
			case replies && f == cutReply && !handshake(buf[:n]) && p.fault.CompareAndSwap(cutReply, passAll):
				return // the reply is lost with the connection
			case replies && f == cutThenRefuse:
				p.close()
				return
			case !replies && f == dropRequest && strings.Contains(strings.ToLower(string(buf[:n])), "xadd") &&
				p.fault.CompareAndSwap(dropRequest, passAll):
				return // the command is lost with the connection
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// handshake reports whether a reply is a new connection's (HELLO's map,
// CLIENT SETINFO's answer), which no publish gets.
func handshake(reply []byte) bool {
	return len(reply) > 0 && reply[0] == '%' || strings.HasPrefix(string(reply), "+OK") || strings.Contains(string(reply), "setinfo")
}

// close stops accepting and closes every connection: dials are refused.
func (p *cutProxy) close() {
	p.l.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// proxied opens a driver on prefix through a new cutProxy, with handler
// "h" subscribed and the direct path's registry read.
func proxied(t *testing.T, base, prefix string) (*cutProxy, *Driver) {
	t.Helper()
	target := strings.TrimSuffix(strings.TrimPrefix(base, "redis://"), "/0")
	p := newCutProxy(t, target)
	d := openURL(t, withParams("redis://"+p.l.Addr().String()+"/0", "prefix", prefix, "dial_timeout", "1s"), transport.Config{})
	subscribe(t, d, "h", "a.*", time.Minute)
	// Both paths have their connection, so the faults hit publishes
	// rather than handshakes.
	warm := msg("a.b")
	warm.IDGenerated = true
	publish(t, d, warm, msg("a.b"))
	return p, d
}

// TestLostReplyIsResolvedOrOutcomeUnknown checks what Publish says when
// its connection fails after the command was sent: when the driver can
// find out that Redis stored the events (their dedup records, or the
// events in the streams) it returns nil; when it cannot, an error that
// matches transport.ErrOutcomeUnknown, never a bare EOF, and publishing
// the same id again stores the event once. A publish that could not
// connect at all is not reported as unknown.
func TestLostReplyIsResolvedOrOutcomeUnknown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := serverURL(t)
	prefix := testPrefix(t)
	t.Cleanup(func() { deletePrefix(base, prefix) })
	check := openURL(t, withParams(base, "prefix", prefix), transport.Config{})
	stored := func() int64 { return check.client.XLen(ctx, check.streamKey("h")).Val() }
	try := func(d *Driver, m *transport.Message) error {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return d.Publish(pctx, []*transport.Message{m})
	}
	p, d := proxied(t, base, prefix)

	// The reply is lost, Redis ran the command, and the driver can still
	// read back what it stored.
	for _, generated := range []bool{false, true} {
		m := msg("a.b")
		m.IDGenerated = generated
		before := stored()
		p.fault.Store(cutReply)
		err := try(d, m)
		if err != nil {
			t.Fatalf("generated id %v: Publish with its reply lost, Redis reachable again = %v (stream grew by %d), want nil: the driver can tell that the event was stored", generated, err, stored()-before)
		}
		if m.Duplicate != nil {
			t.Fatalf("generated id %v: reported a duplicate of itself", generated)
		}
		if n := stored(); n != before+1 {
			t.Fatalf("generated id %v: Publish = %v; the stream grew by %d, want the event stored once", generated, err, n-before)
		}
		t.Logf("generated id %v, reply lost: %v", generated, err)
	}

	// The command is lost before Redis reads it: nothing is stored, and
	// the outcome is unknown (Redis could still have read it).
	m := msg("a.b")
	m.IDGenerated = true
	before := stored()
	p.fault.Store(dropRequest)
	err := try(d, m)
	if !errors.Is(err, transport.ErrOutcomeUnknown) || !strings.Contains(err.Error(), "no dedup record") {
		t.Fatalf("direct publish whose command was lost = %v, want ErrOutcomeUnknown saying it has no dedup record", err)
	}
	if n := stored(); n != before {
		t.Fatalf("the stream grew by %d for a command that never reached Redis", n-before)
	}

	// The reply is lost and Redis cannot be reached afterwards: unknown.
	// Publishing the same id again stores nothing more and reports the
	// event kept.
	for _, generated := range []bool{false, true} {
		p, d := proxied(t, base, prefix)
		m := msg("a.b")
		m.IDGenerated = generated
		before := stored()
		p.fault.Store(cutThenRefuse)
		err := try(d, m)
		if !errors.Is(err, transport.ErrOutcomeUnknown) {
			t.Fatalf("generated id %v: Publish with its reply lost and Redis gone = %v, want ErrOutcomeUnknown", generated, err)
		}
		t.Logf("generated id %v, reply lost, Redis gone: %v", generated, err)
		if n := stored(); n != before+1 {
			t.Fatalf("generated id %v: the stream grew by %d, want 1", generated, n-before)
		}
		if generated {
			continue
		}
		again := *m
		again.Duplicate = nil
		publish(t, check, &again)
		if again.Duplicate == nil || again.Duplicate.ID != m.ID {
			t.Fatalf("publishing the same id again: Duplicate = %v, want the stored event", again.Duplicate)
		}
		if n := stored(); n != before+1 {
			t.Fatalf("after publishing the same id again the stream grew by %d, want 1", n-before)
		}

		// Nothing answers: no connection is made, nothing is sent, and
		// the outcome is known.
		for _, generated := range []bool{false, true} {
			m := msg("a.b")
			m.IDGenerated = generated
			if err := try(d, m); err == nil || errors.Is(err, transport.ErrOutcomeUnknown) {
				t.Fatalf("generated id %v: Publish with every dial refused = %v, want an error that is not ErrOutcomeUnknown", generated, err)
			}
		}
	}
}
