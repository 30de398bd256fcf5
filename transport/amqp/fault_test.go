package amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ripplehq/ripple/transport"
)

var bg = context.Background()

// openDriver opens a driver on rawURL, closed when the test ends.
func openDriver(t *testing.T, rawURL string) *Driver {
	t.Helper()
	d, err := Open(bg, rawURL, transport.Config{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d.(*Driver)
}

// rabbitmqctl runs rabbitmqctl against the test broker, using the node
// name and environment scripts/test exports; it skips when they are not
// set.
func rabbitmqctl(t *testing.T, args ...string) {
	t.Helper()
	node, env := os.Getenv("RIPPLE_TEST_AMQP_NODE"), os.Getenv("RIPPLE_TEST_AMQP_ENV")
	if node == "" || env == "" {
		t.Skip("RIPPLE_TEST_AMQP_NODE and RIPPLE_TEST_AMQP_ENV are not set (scripts/test sets them): this test drives the broker with rabbitmqctl")
	}
	cmdArgs := append([]string{"-u", "rabbitmq", "--", "env"}, strings.Fields(env)...)
	cmdArgs = append(cmdArgs, "/usr/lib/rabbitmq/bin/rabbitmqctl", "-q", "-n", node)
	cmdArgs = append(cmdArgs, args...)
	ctx, cancel := context.WithTimeout(bg, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "runuser", cmdArgs...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

// collector subscribes a handler and records every id it completes.
type collector struct {
	mu   sync.Mutex
	seen map[string]bool
}

func collect(t *testing.T, d *Driver, name, pattern string, stop <-chan struct{}) *collector {
	t.Helper()
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: name, Pattern: pattern, Lease: 5 * time.Second, MaxAttempts: 100})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	c := &collector{seen: map[string]bool{}}
	go func() {
		defer sub.Close()
		ctx, cancel := context.WithCancel(bg)
		go func() { <-stop; cancel() }()
		for ctx.Err() == nil {
			ds, err := sub.Receive(ctx, 16)
			if err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			st := make([]transport.Settlement, len(ds))
			c.mu.Lock()
			for i, dv := range ds {
				c.seen[dv.ID] = true
				st[i] = transport.Settlement{Delivery: dv, Outcome: transport.Complete}
			}
			c.mu.Unlock()
			_ = sub.Settle(ctx, st)
		}
	}()
	return c
}

func (c *collector) missing(ids []string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, id := range ids {
		if !c.seen[id] {
			out = append(out, id)
		}
	}
	return out
}

func waitAll(t *testing.T, c *collector, ids []string) {
	t.Helper()
	// Delivery on a loaded machine can be slower than publishing was, so
	// the test gives up only when deliveries stop making progress.
	const stall = 30 * time.Second
	left, progressed := len(ids), time.Now()
	for time.Since(progressed) < stall {
		m := len(c.missing(ids))
		if m == 0 {
			return
		}
		if m < left {
			left, progressed = m, time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := c.missing(ids)
	t.Fatalf("%d of %d acknowledged events never delivered (lost; no delivery for %v), e.g. %v", len(m), len(ids), stall, m[:min(5, len(m))])
}

func msg(i int, typ string) *transport.Message {
	return &transport.Message{
		ID: fmt.Sprintf("ev-%d-%s", i, randHex(4)), Type: typ, Time: time.Now(),
		Attrs: map[string]string{"source": "test"}, Data: []byte(fmt.Sprint(i)),
	}
}

// publishLoop runs n publishers until stop closes and returns the ids of
// the publishes that returned nil, checking that every failure says why.
func publishLoop(t *testing.T, d *Driver, typ string, n int, stop <-chan struct{}) func() ([]string, int) {
	var (
		mu    sync.Mutex
		acked []string
		fails atomic.Int64
		wg    sync.WaitGroup
	)
	for p := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := msg(p*1_000_000+i, typ)
				ctx, cancel := context.WithTimeout(bg, 5*time.Second)
				err := d.Publish(ctx, []*transport.Message{m})
				cancel()
				if err == nil {
					mu.Lock()
					acked = append(acked, m.ID)
					mu.Unlock()
					// Paced, so that what a fault test must then
					// deliver stays bounded however long the fault lasts.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				fails.Add(1)
				if strings.Contains(err.Error(), "guest:guest") {
					t.Errorf("error leaks credentials: %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	return func() ([]string, int) {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), acked...), int(fails.Load())
	}
}

// TestBrokerRestart stops and starts the broker's application under 16
// publishers: every publish that returned nil is delivered, and the
// driver recovers by itself.
func TestBrokerRestart(t *testing.T) {
	u := namespaceURL(t)
	d := openDriver(t, u)
	stop := make(chan struct{})
	c := collect(t, d, "restart.h", "fault.restart.*", stop)
	defer close(stop)
	pubStop := make(chan struct{})
	wait := publishLoop(t, d, "fault.restart.x", 16, pubStop)
	time.Sleep(300 * time.Millisecond)
	rabbitmqctl(t, "stop_app")
	time.Sleep(500 * time.Millisecond)
	rabbitmqctl(t, "start_app")
	rabbitmqctl(t, "await_startup")
	// Publishes must succeed again without any help.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		err := d.Publish(ctx, []*transport.Message{msg(-1, "fault.restart.x")})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publishing still fails a minute after the broker came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(pubStop)
	acked, fails := wait()
	t.Logf("%d publishes acknowledged, %d failed during the restart", len(acked), fails)
	if len(acked) == 0 {
		t.Fatal("no publish succeeded")
	}
	waitAll(t, c, acked)
}

// cutProxy forwards TCP to the broker and can cut every connection.
type cutProxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestProxyCutsConnections cuts every connection several times under
// publishers and a consumer: nothing acknowledged is lost, failures wrap
// ErrOutcomeUnknown or say nothing was sent, and the driver reconnects.
func TestProxyCutsConnections(t *testing.T) {
	raw := namespaceURL(t)
	pu, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	p := newCutProxy(t, pu.Host)
	pu.Host = p.l.Addr().String()
	d := openDriver(t, pu.String())
	stop := make(chan struct{})
	defer close(stop)
	c := collect(t, d, "cut.h", "fault.cut.>", stop)
	pubStop := make(chan struct{})
	wait := publishLoop(t, d, "fault.cut.x", 4, pubStop)
	for range 3 {
		time.Sleep(200 * time.Millisecond)
		p.cut()
	}
	time.Sleep(500 * time.Millisecond)
	// Recovered by itself: a publish within a generous bound succeeds.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		err := d.Publish(ctx, []*transport.Message{msg(-1, "fault.cut.x")})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publishing still fails after the cuts: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(pubStop)
	acked, fails := wait()
	t.Logf("%d acknowledged, %d failed across 3 cuts", len(acked), fails)
	waitAll(t, c, acked)
}

// TestLostConfirmIsOutcomeUnknown: a connection cut while a publish
// waits for its confirm returns an error wrapping ErrOutcomeUnknown.
func TestLostConfirmIsOutcomeUnknown(t *testing.T) {
	raw := namespaceURL(t)
	pu, _ := url.Parse(raw)
	p := newCutProxy(t, pu.Host)
	pu.Host = p.l.Addr().String()
	d := openDriver(t, pu.String())
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "lost.h", Pattern: "fault.lost.x", Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	// Many publishes in flight; cut while they wait.
	var wg sync.WaitGroup
	var unknown, other atomic.Int64
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := d.Publish(bg, []*transport.Message{msg(i, "fault.lost.x")})
			switch {
			case err == nil:
			case errors.Is(err, transport.ErrOutcomeUnknown):
				unknown.Add(1)
			default:
				other.Add(1)
				if !strings.Contains(err.Error(), "nothing was sent") {
					t.Errorf("a failed publish neither wraps ErrOutcomeUnknown nor says nothing was sent: %v", err)
				}
			}
		}()
	}
	p.cut()
	wg.Wait()
	t.Logf("outcome unknown %d, not sent %d", unknown.Load(), other.Load())
}

// TestOpenErrors: bad credentials, vhost and parameters fail Open with
// errors that say what is wrong, without the password.
func TestOpenErrors(t *testing.T) {
	base := serverURL(t)
	u, _ := url.Parse(base)
	bad := *u
	bad.User = url.UserPassword("guest", "wrong-secret")
	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	_, err := Open(ctx, bad.String(), transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "credentials") || strings.Contains(err.Error(), "wrong-secret") {
		t.Errorf("wrong password: %v; want an error about the credentials, without the password", err)
	}
	vh := *u
	vh.Path = "/no-such-vhost"
	_, err = Open(ctx, vh.String(), transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "virtual host") {
		t.Errorf("unknown vhost: %v; want an error about the virtual host", err)
	}
	_, err = Open(ctx, base+"?colour=red", transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown parameter: %v", err)
	}
	_, err = Open(ctx, base+"?queue_type=stream", transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "queue_type") {
		t.Errorf("bad queue_type: %v", err)
	}
	_, err = Open(ctx, base+"?namespace=a/b", transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "namespace") {
		t.Errorf("bad namespace: %v", err)
	}
	// Nothing listens: fails within ctx.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	short, cancel2 := context.WithTimeout(bg, 3*time.Second)
	defer cancel2()
	start := time.Now()
	_, err = Open(short, "amqp://guest:secret@"+addr+"/", transport.Config{})
	if err == nil || strings.Contains(err.Error(), "secret") || time.Since(start) > 10*time.Second {
		t.Errorf("closed port: %v after %s", err, time.Since(start))
	}
}

// TestConflictingQueue: a queue that exists with other arguments
// (PRECONDITION_FAILED) is a clear error from Subscribe.
func TestConflictingQueue(t *testing.T) {
	raw := namespaceURL(t)
	d := openDriver(t, raw)
	ch := rawChannel(t)
	q := d.queueName("conflict.h")
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
		t.Fatal(err)
	}
	declareHook(d.ns, q)
	_, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "conflict.h", Pattern: "fault.conflict.x", Lease: time.Second})
	if err == nil || !strings.Contains(err.Error(), "exists with other arguments") {
		t.Fatalf("Subscribe over a conflicting queue: %v; want an error saying the queue exists with other arguments", err)
	}
}

func rawChannel(t *testing.T) *amqp.Channel {
	c, err := amqp.Dial(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// TestMessageTooLarge: an event over the URL's max_message_size is
// refused before it is sent; one over the broker's own limit fails with
// the broker's reason, never nil and never a hang.
func TestMessageTooLarge(t *testing.T) {
	raw := namespaceURL(t)
	d := openDriver(t, raw+"&max_message_size=1000")
	err := d.Publish(bg, []*transport.Message{{ID: "big", Type: "fault.big.x", Data: make([]byte, 2000), Time: time.Now()}})
	if err == nil || !strings.Contains(err.Error(), "max_message_size") {
		t.Errorf("publish over max_message_size: %v", err)
	}
	// The test broker's max_message_size is 16 MiB (scripts/test).
	d2 := openDriver(t, raw+"&max_message_size=67108864")
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	err = d2.Publish(ctx, []*transport.Message{{ID: "huge", Type: "fault.big.x", Data: make([]byte, 17<<20), Time: time.Now()}})
	if err == nil {
		t.Fatal("a publish over the broker's max_message_size returned nil")
	}
	t.Logf("over the broker limit: %v", err)
	if !strings.Contains(err.Error(), "max_message_size") || errors.Is(err, transport.ErrOutcomeUnknown) {
		t.Errorf("publish over the broker's limit: %v; want the broker's reason", err)
	}
	// The driver goes on working.
	if err := d2.Publish(bg, []*transport.Message{msg(1, "fault.big.x")}); err != nil {
		t.Errorf("publish after the refusal: %v", err)
	}
}

// TestBlockedConnection: under a memory alarm, Publish fails within its
// ctx with an error wrapping ErrStorageFull; once the alarm clears it
// succeeds again.
func TestBlockedConnection(t *testing.T) {
	raw := namespaceURL(t)
	d := openDriver(t, raw)
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "blocked.h", Pattern: "fault.blocked.x", Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	rabbitmqctl(t, "set_vm_memory_high_watermark", "0.0001")
	defer rabbitmqctl(t, "set_vm_memory_high_watermark", "0.4")
	// The broker blocks a connection on its next publish.
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(bg, 2*time.Second)
		start := time.Now()
		err = d.Publish(ctx, []*transport.Message{msg(1, "fault.blocked.x")})
		took := time.Since(start)
		cancel()
		if took > 4*time.Second {
			t.Fatalf("Publish took %s with a 2s ctx under a memory alarm", took)
		}
		if errors.Is(err, transport.ErrStorageFull) {
			break
		}
		if err != nil && !errors.Is(err, transport.ErrOutcomeUnknown) {
			t.Fatalf("Publish under a memory alarm: %v; want ErrStorageFull or ErrOutcomeUnknown", err)
		}
	}
	if !errors.Is(err, transport.ErrStorageFull) || !strings.Contains(err.Error(), "alarm") {
		t.Fatalf("Publish under a memory alarm: %v; want an error wrapping ErrStorageFull naming the alarm", err)
	}
	rabbitmqctl(t, "set_vm_memory_high_watermark", "0.4")
	deadline = time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		err = d.Publish(ctx, []*transport.Message{msg(2, "fault.blocked.x")})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish after the alarm cleared: %v", err)
		}
	}
}

// TestKilledConsumerUnacked: a consumer whose connection dies with
// deliveries unacknowledged (as a SIGKILL does) gives them back at once,
// with the attempt counted (a redelivered copy is replaced by one carrying it).
func TestKilledConsumerUnacked(t *testing.T) {
	raw := namespaceURL(t)
	pu, _ := url.Parse(raw)
	p := newCutProxy(t, pu.Host)
	pu.Host = p.l.Addr().String()
	victim := openDriver(t, pu.String())
	spec := transport.SubscriptionSpec{Name: "killed.h", Pattern: "fault.killed.x", Lease: time.Minute, MaxAttempts: 5}
	vs, err := victim.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	pub := openDriver(t, raw)
	var ids []string
	for i := range 5 {
		m := msg(i, "fault.killed.x")
		ids = append(ids, m.ID)
		if err := pub.Publish(bg, []*transport.Message{m}); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for got < 5 {
		ds, err := vs.Receive(bg, 5-got)
		if err != nil {
			t.Fatal(err)
		}
		got += len(ds)
	}
	// The victim's connections die without a close handshake.
	p.cut()
	other, err := pub.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	seen := map[string]int{}
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	for len(seen) < 5 {
		ds, err := other.Receive(ctx, 5)
		if err != nil {
			t.Fatalf("after %d of 5 came back (the lease is a minute, so they must come back from the closed connection): %v", len(seen), err)
		}
		for _, d := range ds {
			seen[d.ID] = d.Attempt
			_ = other.Settle(bg, []transport.Settlement{{Delivery: d, Outcome: transport.Complete}})
		}
	}
	for _, id := range ids {
		if seen[id] != 2 {
			t.Errorf("event %s came back with attempt %d, want 2", id, seen[id])
		}
	}
}

// TestBindingKey checks the pattern mapping to AMQP topic keys.
func TestBindingKey(t *testing.T) {
	for in, want := range map[string]string{
		"user.signup.completed": "user.signup.completed",
		"user.*":                "user.*",
		"order.>":               "order.*.#",
		"*.created":             "*.created",
	} {
		if got := bindingKey(in); got != want {
			t.Errorf("bindingKey(%q) = %q, want %q", in, got, want)
		}
	}
	for left, want := range map[time.Duration]time.Duration{
		time.Millisecond:      10 * time.Millisecond,
		25 * time.Millisecond: 20 * time.Millisecond,
		time.Second:           640 * time.Millisecond,
		100 * 24 * time.Hour:  minBucket << (numBuckets - 1),
	} {
		if got := bucketFor(left); got != want {
			t.Errorf("bucketFor(%s) = %s, want %s", left, got, want)
		}
	}
}

// TestRetentionChange: a handler whose dead-letter and history queues
// were declared under other retention limits still subscribes (the
// queues keep their limits, with a warning) instead of failing on
// PRECONDITION_FAILED.
func TestRetentionChange(t *testing.T) {
	raw := namespaceURL(t)
	spec := transport.SubscriptionSpec{Name: "ret.h", Pattern: "fault.ret.x", Lease: time.Second}
	for i, r := range []transport.Retention{{DeadCount: 3, CompletedCount: 5}, {DeadCount: 7, DeadAge: time.Hour, CompletedCount: 9}} {
		d, err := Open(bg, raw, transport.Config{Retention: r})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := d.Subscribe(bg, spec)
		if err != nil {
			t.Fatalf("Subscribe with retention %d: %v", i, err)
		}
		if err := d.Publish(bg, []*transport.Message{msg(i, "fault.ret.x")}); err != nil {
			t.Fatal(err)
		}
		ds, err := sub.Receive(bg, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := sub.Settle(bg, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Complete}}); err != nil {
			t.Fatalf("Settle with retention %d: %v", i, err)
		}
		sub.Close()
		d.Close()
	}
}

// TestEphemeralDeletedOnClose: an ephemeral subscription's queue is gone
// once its receiver closes.
func TestEphemeralDeletedOnClose(t *testing.T) {
	d := openDriver(t, namespaceURL(t))
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail.x1", Pattern: "fault.eph.>", Lease: time.Second, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Publish(bg, []*transport.Message{msg(1, "fault.eph.x")}); err != nil {
		t.Fatal(err)
	}
	ds, err := sub.Receive(bg, 1)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Receive: %v %v", ds, err)
	}
	if st, err := d.Stats(bg); err != nil || len(st) != 1 || st[0].Active != 1 {
		t.Errorf("Stats with one leased ephemeral delivery: %+v %v", st, err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := d.passiveCount(bg, d.queueName("tail.x1")); ok || err != nil {
		t.Errorf("the ephemeral queue still exists after Close (err %v)", err)
	}
	if _, ok, _ := d.passiveCount(bg, d.deadName("tail.x1")); ok {
		t.Error("the ephemeral dead-letter queue still exists after Close")
	}
}
