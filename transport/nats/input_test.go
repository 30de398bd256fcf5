package nats

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

func openDriver(t *testing.T, url string) *Driver {
	t.Helper()
	d, err := Open(bg, url, transport.Config{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d.(*Driver)
}

func wantErrContaining(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want one", what)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not say %q", what, err, p)
		}
	}
}

func TestParseURL(t *testing.T) {
	o, err := parseURL("nats://alice:s3cret@localhost:4222/app?replicas=3&servers=b:4222,c:4222&timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	if o.prefix != "app" || o.replicas != 3 || o.timeout != 2*time.Second || len(o.servers) != 3 || o.servers[1] != "nats://b:4222" {
		t.Errorf("parsed %+v", o)
	}
	if strings.Contains(o.redacted, "s3cret") {
		t.Errorf("redacted URL %q shows the password", o.redacted)
	}
	o, err = parseURL("nats://tok3n@localhost:4222")
	if err != nil || strings.Contains(o.redacted, "tok3n") || o.prefix != DefaultPrefix {
		t.Errorf("token URL: %+v, %v", o, err)
	}
	if o, err := parseURL("tls://h:4222"); err != nil || !o.tls || !strings.HasPrefix(o.servers[0], "tls://") {
		t.Errorf("tls URL: %+v, %v", o, err)
	}
	if o, err := parseURL("nats://h:4222?history=memory"); err != nil || o.history != jetstream.MemoryStorage {
		t.Errorf("history=memory: %+v, %v", o, err)
	}
	for _, bad := range []string{"nats://h:4222?history=disk", "nats://h:4222?replicas=9", "nats://h:4222?bogus=1", "nats://h:4222/a.b", "nats://", "nats://h:4222?timeout=-1s"} {
		if _, err := parseURL(bad); err == nil {
			t.Errorf("parseURL(%q) accepted it", bad)
		}
	}
	if _, err := parseURL("nats://bob:hunter2@h:4222?bogus=1"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error for a bad URL shows the password or is missing: %v", err)
	}
}

func TestTokenReversible(t *testing.T) {
	names := []string{"email.welcome", "email_welcome", "a._b", "a_.b", "a__d", "a.d", "x-y.z_9"}
	seen := map[string]string{}
	for _, n := range names {
		tok := token(n)
		if strings.ContainsAny(tok, ".*> ") {
			t.Errorf("token(%q) = %q has a character JetStream names cannot", n, tok)
		}
		if back := handlerOf(tok); back != n {
			t.Errorf("handlerOf(token(%q)) = %q", n, back)
		}
		if other, dup := seen[tok]; dup {
			t.Errorf("%q and %q share token %q", n, other, tok)
		}
		seen[tok] = n
	}
}

// TestUnreachableServer: Open of an address where nothing listens fails
// with an error saying where and what to check, without the password.
func TestUnreachableServer(t *testing.T) {
	port := freePort(t)
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	_, err := ripple.Open(ctx, "nats://u:pw123@127.0.0.1:"+itoa(port)+"?timeout=1s")
	wantErrContaining(t, "Open of an unreachable server", err, "cannot connect", "127.0.0.1:"+itoa(port), "-js")
	if err != nil && strings.Contains(err.Error(), "pw123") {
		t.Errorf("error shows the password: %v", err)
	}
}

// TestServerWithoutJetStream: a server run without -js is refused with an
// error that says how to enable JetStream.
func TestServerWithoutJetStream(t *testing.T) {
	port := freePort(t)
	srv := startServer(t, port, "listen: 127.0.0.1:"+itoa(port)+"\n")
	_, err := Open(bg, srv.url(), transport.Config{})
	wantErrContaining(t, "Open of a server without JetStream", err, "does not run JetStream", "-js")
}

// TestForeignStream: a stream of Ripple's name created by someone else
// with other settings is refused, and left alone.
func TestForeignStream(t *testing.T) {
	base := serverURL(t)
	prefix := "t" + randHex(6)
	t.Cleanup(func() { deletePrefix(base, prefix) })
	nc, err := nats.Connect(base)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	name := "ripple-" + prefix + "-events"
	if _, err := js.CreateStream(bg, jetstream.StreamConfig{Name: name, Subjects: []string{prefix + ".ev.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	_, err = Open(bg, base+"/"+prefix, transport.Config{})
	wantErrContaining(t, "Open over a foreign stream", err, name, "nats stream rm")
	s, err := js.Stream(bg, name)
	if err != nil || s.CachedInfo().Config.Retention != jetstream.WorkQueuePolicy {
		t.Errorf("the foreign stream was changed or deleted: %v", err)
	}
}

// TestForeignConsumer: a consumer of a handler's name that Ripple did not
// create is refused when the handler subscribes.
func TestForeignConsumer(t *testing.T) {
	u := prefixURL(t)
	d := openDriver(t, u)
	if _, err := d.js.CreateOrUpdateConsumer(bg, d.eventsStream(), jetstream.ConsumerConfig{Durable: consumerName("billing.charge"), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	_, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "billing.charge", Pattern: "order.placed", Lease: time.Second})
	wantErrContaining(t, "Subscribe over a foreign consumer", err, "not created by Ripple", "nats consumer rm")
}

// TestPayloadOverMaxPayload: an event larger than the server's
// max_payload is refused before anything is stored, saying what to do.
func TestPayloadOverMaxPayload(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "big", Pattern: "blob.stored", Lease: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := &transport.Message{ID: "big-1", Type: "blob.stored", Time: time.Now(), Attrs: map[string]string{"source": "test"}, Data: make([]byte, d.nc.MaxPayload()+1)}
	err = d.Publish(bg, []*transport.Message{big})
	wantErrContaining(t, "Publish over max_payload", err, "max_payload")
	if st, _ := d.Stats(bg); len(st) != 1 || st[0].Waiting != 0 {
		t.Errorf("stats after a refused publish: %+v", st)
	}
}

// TestDuplicateReportsKept: a duplicate publish reports the message kept
// (its data as first published), while the original is still stored.
func TestDuplicateReportsKept(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "dup", Pattern: "dup.checked", Lease: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mk := func(data string) *transport.Message {
		return &transport.Message{ID: "d-1", Type: "dup.checked", Time: time.Now(), Attrs: map[string]string{"source": "src"}, Data: []byte(data)}
	}
	first, again := mk("first"), mk("second")
	if err := d.Publish(bg, []*transport.Message{first}); err != nil || first.Duplicate != nil {
		t.Fatalf("first publish: %v, duplicate %v", err, first.Duplicate)
	}
	if err := d.Publish(bg, []*transport.Message{again}); err != nil {
		t.Fatal(err)
	}
	if again.Duplicate == nil || string(again.Duplicate.Data) != "first" {
		t.Fatalf("duplicate publish reported %+v, want the kept message with data \"first\"", again.Duplicate)
	}
	other := mk("other source")
	other.Attrs = map[string]string{"source": "elsewhere"}
	if err := d.Publish(bg, []*transport.Message{other}); err != nil || other.Duplicate != nil {
		t.Fatalf("same id from another source: %v, duplicate %+v; want it stored", err, other.Duplicate)
	}
	if st, _ := d.Stats(bg); len(st) != 1 || st[0].Waiting != 2 {
		t.Errorf("stats: %+v, want 2 waiting", st)
	}
}

// TestPauseResume: a paused handler receives nothing, in any process,
// and gets everything published meanwhile once resumed.
func TestPauseResume(t *testing.T) {
	u := prefixURL(t)
	d := openDriver(t, u)
	other := openDriver(t, u)
	spec := transport.SubscriptionSpec{Name: "paused.h", Pattern: "pause.checked", Lease: 2 * time.Second}
	s, err := other.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := d.Pause(bg, "paused.h"); err != nil {
		t.Fatal(err)
	}
	if err := d.Pause(bg, "no.such"); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("Pause of an unknown handler: %v, want ErrNotFound", err)
	}
	m := &transport.Message{ID: "p-1", Type: "pause.checked", Time: time.Now(), Attrs: map[string]string{"source": "s"}}
	if err := d.Publish(bg, []*transport.Message{m}); err != nil {
		t.Fatal(err)
	}
	// A process starting the handler meanwhile does not resume it.
	s2, err := d.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	ctx, cancel := context.WithTimeout(bg, 1500*time.Millisecond)
	ds, err := s.Receive(ctx, 1)
	cancel()
	if len(ds) != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive while paused: %d deliveries, %v", len(ds), err)
	}
	if st, _ := d.Stats(bg); len(st) != 1 || !st[0].Paused || st[0].Waiting != 1 {
		t.Errorf("stats while paused: %+v", st)
	}
	if err := d.Resume(bg, "paused.h"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	ds, err = s.Receive(ctx, 1)
	if err != nil || len(ds) != 1 || ds[0].ID != "p-1" {
		t.Fatalf("Receive after Resume: %v, %v", ds, err)
	}
}

// TestEphemeral: an ephemeral subscription's consumer is deleted when its
// receiver closes.
func TestEphemeral(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail.x1", Pattern: "any.>", Lease: time.Second, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.js.Consumer(bg, d.eventsStream(), consumerName("tail.x1")); err != nil {
		t.Fatalf("consumer of the ephemeral subscription: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.js.Consumer(bg, d.eventsStream(), consumerName("tail.x1")); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("after Close the consumer is still there (%v)", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestEphemeralReaped: an ephemeral subscription whose process vanished
// without closing it (its connection dropped, as with SIGKILL) is reaped
// by the server after a few leases of inactivity.
func TestEphemeralReaped(t *testing.T) {
	u := prefixURL(t)
	d := openDriver(t, u)
	watcher := openDriver(t, u)
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "tail.gone", Pattern: "any.>", Lease: time.Second, Ephemeral: true}); err != nil {
		t.Fatal(err)
	}
	d.nc.Close() // the process dies: nothing deletes the consumer
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := watcher.js.Consumer(bg, watcher.eventsStream(), consumerName("tail.gone"))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the abandoned ephemeral subscription's consumer is still there after 2m (%v)", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestDefaultsKeepNamespaceSettings: a bus that leaves retention at its
// defaults (a tool like ripple stats) does not undo the limits another
// bus set on the namespace, and one that sets them does.
func TestDefaultsKeepNamespaceSettings(t *testing.T) {
	u := prefixURL(t)
	set := func(r transport.Retention) *Driver {
		d, err := Open(bg, u, transport.Config{Retention: r})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d.(*Driver)
	}
	limits := func(d *Driver) (int64, time.Duration, time.Duration) {
		done, err := d.js.Stream(bg, d.doneStream())
		if err != nil {
			t.Fatal(err)
		}
		ev, err := d.js.Stream(bg, d.eventsStream())
		if err != nil {
			t.Fatal(err)
		}
		c := done.CachedInfo().Config
		return c.MaxMsgsPerSubject, c.MaxAge, ev.CachedInfo().Config.Duplicates
	}
	app := set(transport.Retention{CompletedCount: 5, CompletedAge: time.Hour, DedupWindow: time.Minute})
	tool := set(transport.Retention{})
	if n, age, dup := limits(tool); n != 5 || age != time.Hour || dup != time.Minute {
		t.Errorf("after a bus with default retention opened: completed %d for %s, dedup %s; want 5 for 1h, dedup 1m as the application set", n, age, dup)
	}
	set(transport.Retention{CompletedCount: 7})
	if n, age, _ := limits(app); n != 7 || age != time.Hour {
		t.Errorf("after a bus set KeepCompleted(7): completed %d for %s; want 7 for 1h", n, age)
	}
}

// TestUnsubscribeFreesStream: what was queued only for an unsubscribed
// handler leaves the events stream (interest retention), so nothing is
// kept for a handler that no longer exists.
func TestUnsubscribeFreesStream(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "gone.h", Pattern: "gone.queued", Lease: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 5 {
		m := &transport.Message{ID: "g-" + itoa(i), Type: "gone.queued", Time: time.Now(), Attrs: map[string]string{"source": "s"}}
		if err := d.Publish(bg, []*transport.Message{m}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Unsubscribe(bg, "gone.h"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := d.events.Info(bg)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the events stream still holds %d messages queued only for the unsubscribed handler", info.State.Msgs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
