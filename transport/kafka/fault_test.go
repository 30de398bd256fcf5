package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

var bg = context.Background()

// logBuffer collects a bus's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func openBus(t *testing.T, url string, opts ...ripple.Option) *ripple.Bus {
	t.Helper()
	bus, err := ripple.Open(bg, url, opts...)
	if err != nil {
		t.Fatalf("ripple.Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(bg, 10*time.Second)
		defer cancel()
		_ = bus.Shutdown(ctx)
	})
	return bus
}

func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// handled records which event ids a handler completed.
type handled struct {
	mu  sync.Mutex
	ids map[string]int
}

func (h *handled) record(_ context.Context, e ripple.Event) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ids == nil {
		h.ids = map[string]int{}
	}
	h.ids[e.ID]++
	return nil
}

func (h *handled) has(ids []string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		if h.ids[id] == 0 {
			return false
		}
	}
	return true
}

// TestBrokerStopped stops one of the three brokers while events are
// published and handled: every acknowledged event is still handled.
func TestBrokerStopped(t *testing.T) {
	if cluster == nil {
		t.Skip("stopping a broker needs the in-process kfake cluster (RIPPLE_TEST_KAFKA_URL is set)")
	}
	c, err := startCluster()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close) // after the bus's shutdown
	url := "kafka://" + strings.Join(c.ListenAddrs(), ",") + "?namespace=brokerstop"
	bus := openBus(t, url)
	var h handled
	if err := bus.On("fault.broker.stopped", "fault.worker", h.record, ripple.Concurrency(4)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	var acked []string
	var failed int
	for i := range 150 {
		if i == 50 {
			if err := c.RemoveNode(0); err != nil {
				t.Fatalf("RemoveNode: %v", err)
			}
			t.Log("stopped broker 0 of 3")
		}
		ctx, cancel := context.WithTimeout(bg, 30*time.Second)
		ev, err := bus.Publish(ctx, "fault.broker.stopped", map[string]int{"i": i})
		cancel()
		if err != nil {
			failed++
			t.Logf("publish %d failed while a broker was stopped: %v", i, err)
			continue
		}
		acked = append(acked, ev.ID)
	}
	if failed > 5 {
		t.Errorf("%d of 150 publishes failed after one of three brokers stopped; want the client to move to the others", failed)
	}
	waitFor(t, "every acknowledged event to be handled after a broker stopped", 60*time.Second, func() bool { return h.has(acked) })
}

// TestTopicDeleted deletes the event topic under a running handler: the
// bus reports a clear error, does not spin, and Publish fails clearly.
func TestTopicDeleted(t *testing.T) {
	url := newURL(t)
	var logs logBuffer
	bus := openBus(t, url, ripple.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	var h handled
	if err := bus.On("fault.topic.deleted", "fault.deleted", h.record); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	ev, err := bus.Publish(bg, "fault.topic.deleted", 1)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first event to be handled", 20*time.Second, func() bool { return h.has([]string{ev.ID}) })

	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ns := strings.SplitN(strings.SplitN(url, "namespace=", 2)[1], "&", 2)[0]
	resp, err := kadm.NewClient(cl).DeleteTopics(bg, ns+".events")
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("deleting the event topic: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bus log:\n%s", logs.String())
		}
	})
	waitFor(t, "the bus to report the deleted topic", 30*time.Second, func() bool {
		return logs.count("no longer exists") > 0
	})
	before := logs.count("receive failed")
	time.Sleep(2 * time.Second)
	if n := logs.count("receive failed") - before; n > 20 {
		t.Errorf("the handler's receive loop failed %d times in 2s after its topic was deleted; want it to back off", n)
	}
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	_, err = bus.Publish(ctx, "fault.topic.deleted", 2)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Publish to a deleted topic: %v; want an error saying the topic does not exist", err)
	}
}

// TestUnreachable: a bootstrap list where nothing listens fails Open
// within its context, naming the brokers.
func TestUnreachable(t *testing.T) {
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("kafka://127.0.0.1:%d,127.0.0.1:%d?dial_timeout=1s", ports[0], ports[1])
	ctx, cancel := context.WithTimeout(bg, 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err = ripple.Open(ctx, url)
	if err == nil {
		t.Fatal("Open of an unreachable bootstrap list succeeded")
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("Open took %s to fail with a 3s context", took)
	}
	if msg := err.Error(); !strings.Contains(msg, fmt.Sprint(ports[0])) || !strings.Contains(msg, "no broker") {
		t.Errorf("Open error %q does not name the brokers or say none answered", msg)
	}
}

// TestTopicNames: handler topics Kafka would reject (too long, or
// colliding once '.' and '_' are alike) are refused with clear errors.
func TestTopicNames(t *testing.T) {
	long := strings.Repeat("n", 150)
	bus := openBus(t, newURL(t)+"x&namespace="+long)
	if err := bus.On("fault.names.long", strings.Repeat("h", 120), func(context.Context, ripple.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
	err := bus.Start(bg)
	if err == nil || !strings.Contains(err.Error(), "at most 249") {
		t.Errorf("Start with a handler whose topic is over 249 characters: %v; want an error naming the limit", err)
	}

	bus2 := openBus(t, newURL(t))
	nop := func(context.Context, ripple.Event) error { return nil }
	if err := bus2.On("fault.names.dots", "clash.one", nop); err != nil {
		t.Fatal(err)
	}
	if err := bus2.Start(bg); err != nil {
		t.Fatal(err)
	}
	// On a started bus, On subscribes at once.
	err = bus2.On("fault.names.dots", "clash_one", nop)
	if err == nil {
		err = bus2.Start(bg)
	}
	if err == nil || !strings.Contains(err.Error(), "collide") {
		t.Errorf("subscribing clash_one beside clash.one: %v; want an error saying their topics collide", err)
	}
}

// TestMessageTooLarge: a record over the topic's max.message.bytes is
// refused with an error that says what to change.
func TestMessageTooLarge(t *testing.T) {
	d, err := Open(bg, newURL(t), transport.Config{MaxMessageSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	msg := &transport.Message{ID: "big-1", Type: "fault.too.large", Time: time.Now(), Attrs: map[string]string{"source": "test"}, Data: bytes.Repeat([]byte("x"), 3<<20)}
	err = d.Publish(bg, []*transport.Message{msg})
	if err == nil || !strings.Contains(err.Error(), "max.message.bytes") {
		t.Errorf("publishing 3 MiB: %v; want an error naming max.message.bytes", err)
	}
}

// TestStartFrom: a new subscription starts from the beginning of
// retained history or from a time; an existing one keeps its position.
func TestStartFrom(t *testing.T) {
	url := newURL(t)
	dr, err := Open(bg, url, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	pub := func(id string) {
		t.Helper()
		if err := dr.Publish(bg, []*transport.Message{{ID: id, Type: "history.item.added", Time: time.Now(), Attrs: map[string]string{"source": "t"}, Data: []byte(`1`)}}); err != nil {
			t.Fatal(err)
		}
	}
	pub("a")
	pub("b")
	time.Sleep(30 * time.Millisecond)
	mid := time.Now()
	time.Sleep(30 * time.Millisecond)
	pub("c")
	take := func(spec transport.SubscriptionSpec, n int) []string {
		t.Helper()
		sub, err := dr.Subscribe(bg, spec)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		var got []string
		deadline := time.Now().Add(20 * time.Second)
		for len(got) < n && time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(bg, 500*time.Millisecond)
			ds, _ := sub.Receive(ctx, 10)
			cancel()
			var ss []transport.Settlement
			for _, d := range ds {
				got = append(got, d.ID)
				ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
			}
			if err := sub.Settle(bg, ss); err != nil {
				t.Fatal(err)
			}
		}
		// Nothing more arrives.
		ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
		defer cancel()
		if ds, _ := sub.Receive(ctx, 10); len(ds) > 0 {
			t.Errorf("%s: an extra delivery %s", spec.Name, ds[0].ID)
		}
		return got
	}
	all := take(transport.SubscriptionSpec{Name: "from.beginning", Pattern: "history.>", Lease: time.Second, From: transport.Beginning}, 3)
	slices.Sort(all)
	if strings.Join(all, ",") != "a,b,c" {
		t.Errorf("From=Beginning got %v, want a,b,c", all)
	}
	since := take(transport.SubscriptionSpec{Name: "from.time", Pattern: "history.>", Lease: time.Second, From: mid}, 1)
	if strings.Join(since, ",") != "c" {
		t.Errorf("From=time got %v, want c", since)
	}
	none := take(transport.SubscriptionSpec{Name: "from.now", Pattern: "history.>", Lease: time.Second}, 0)
	if len(none) != 0 {
		t.Errorf("From=zero got %v, want nothing from before", none)
	}
	// An existing subscription keeps its position.
	pub("d")
	again := take(transport.SubscriptionSpec{Name: "from.beginning", Pattern: "history.>", Lease: time.Second, From: transport.Beginning}, 1)
	if strings.Join(again, ",") != "d" {
		t.Errorf("an existing subscription opened again with From=Beginning got %v, want only d", again)
	}
}

// TestCapabilities: what the transport declares and refuses.
func TestCapabilities(t *testing.T) {
	bus := openBus(t, newURL(t))
	_, err := bus.Publish(bg, "caps.priority.set", 1, ripple.WithPriority(3))
	if !errors.Is(err, ripple.ErrNotSupported) || !strings.Contains(err.Error(), "kafka") {
		t.Errorf("WithPriority: %v; want ErrNotSupported naming kafka", err)
	}
	_, err = bus.Publish(bg, "caps.id.set", 1, ripple.WithID("x-1"))
	if !errors.Is(err, ripple.ErrNotSupported) {
		t.Errorf("WithID: %v; want ErrNotSupported (no publish dedup on kafka)", err)
	}
	if err := bus.On("caps.idem.set", "caps.idem", func(context.Context, ripple.Event) error { return nil }, ripple.Idempotent()); !errors.Is(err, ripple.ErrNotSupported) {
		t.Errorf("Idempotent: %v; want ErrNotSupported", err)
	}
}
