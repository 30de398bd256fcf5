package redis

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// replyCutProxy is a TCP proxy in front of Redis that, while cutting,
// forwards commands to the server but drops its replies and closes both
// sides of the connection as soon as a reply comes: the command has run,
// and the client never learns it.
type replyCutProxy struct {
	l   net.Listener
	cut atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
}

func newReplyCutProxy(t *testing.T, target string) *replyCutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyCutProxy{l: l}
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

func (p *replyCutProxy) pipe(dst, src net.Conn, replies bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if replies && p.cut.Load() {
				return // the reply is lost with the connection
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

// close stops accepting and closes every connection: dials are refused.
func (p *replyCutProxy) close() {
	p.l.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestLostReplyIsOutcomeUnknown checks that a publish whose connection is
// lost after Redis ran it, before its reply arrived, fails with an error
// matching transport.ErrOutcomeUnknown rather than a bare EOF; that the
// event was in fact stored; that publishing it again with the same id
// stores nothing more and reports the duplicate; and that a publish that
// could not connect at all is not reported as unknown.
func TestLostReplyIsOutcomeUnknown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := serverURL(t)
	target := base[len("redis://"):]
	target = target[:len(target)-len("/0")]
	p := newReplyCutProxy(t, target)
	prefix := testPrefix(t)
	t.Cleanup(func() { deletePrefix(base, prefix) })
	d := openURL(t, withParams("redis://"+p.l.Addr().String()+"/0", "prefix", prefix, "dial_timeout", "1s"), transport.Config{})
	check := openURL(t, withParams(base, "prefix", prefix), transport.Config{})
	subscribe(t, d, "h", "a.*", time.Minute)
	warm := msg("a.b")
	warm.IDGenerated = true
	publish(t, d, warm) // the direct path has read the registry

	for _, generated := range []bool{false, true} {
		m := msg("a.b") // an id of its own, as with ripple.WithID
		m.IDGenerated = generated
		before := check.client.XLen(ctx, check.streamKey("h")).Val()
		p.cut.Store(true)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := d.Publish(pctx, []*transport.Message{m})
		cancel()
		p.cut.Store(false)
		if !errors.Is(err, transport.ErrOutcomeUnknown) {
			t.Fatalf("generated id %v: Publish with its reply lost = %v, want an error matching ErrOutcomeUnknown", generated, err)
		}
		t.Logf("generated id %v: %v", generated, err)
		if n := check.client.XLen(ctx, check.streamKey("h")).Val(); n != before+1 {
			t.Fatalf("generated id %v: the stream grew by %d, want the event stored once", generated, n-before)
		}
		if generated {
			continue
		}
		again := *m
		again.Duplicate = nil
		publish(t, d, &again)
		if again.Duplicate == nil || again.Duplicate.ID != m.ID {
			t.Fatalf("publishing the same id again: Duplicate = %v, want the stored event", again.Duplicate)
		}
		if n := check.client.XLen(ctx, check.streamKey("h")).Val(); n != before+1 {
			t.Fatalf("after publishing again the stream grew by %d, want 1", n-before)
		}
	}

	// Nothing answers: no connection is made, nothing is sent, and the
	// outcome is known.
	p.close()
	for _, generated := range []bool{false, true} {
		m := msg("a.b")
		m.IDGenerated = generated
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := d.Publish(pctx, []*transport.Message{m})
		cancel()
		if err == nil || errors.Is(err, transport.ErrOutcomeUnknown) {
			t.Fatalf("generated id %v: Publish with every dial refused = %v, want an error that is not ErrOutcomeUnknown", generated, err)
		}
	}
}
