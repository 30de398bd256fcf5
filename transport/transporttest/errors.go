package transporttest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// testCapabilityGaps: every optional semantic the driver does not declare
// fails with ErrNotSupported naming the transport, and every one it
// declares is accepted.
func testCapabilityGaps(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ = "conformance.caps.checked"
	nop := func(context.Context, ripple.Event) error { return nil }
	check := func(supported bool, what string, err error) {
		t.Helper()
		if supported {
			if err != nil {
				t.Errorf("%s: %v, but the %s transport declares it", what, err, s.name)
			}
			return
		}
		s.wantNotSupported(t, what, err)
	}
	check(s.caps.Priority, "Publish WithPriority(5)", second(bus.Publish(bg, typ, 1, ripple.WithPriority(5))))
	check(s.caps.Delay, "Publish WithDelay(1s)", second(bus.Publish(bg, typ, 1, ripple.WithDelay(time.Second))))
	check(s.caps.Delay, "Publish WithDeliverAt(+1s)", second(bus.Publish(bg, typ, 1, ripple.WithDeliverAt(time.Now().Add(time.Second)))))
	check(s.caps.Dedup, "Publish WithID", second(bus.Publish(bg, typ, 1, ripple.WithID("caps-1"))))
	check(s.caps.Ordered, "On with Ordered()", bus.On(typ, "caps.ordered", nop, ripple.Ordered()))
	check(s.claimer, "On with Idempotent()", bus.On(typ, "caps.idempotent", nop, ripple.Idempotent()))
	check(s.caps.Ephemeral, "On with Ephemeral()", bus.On(typ, "caps.ephemeral", nop, ripple.Ephemeral()))
	check(s.caps.StartFrom, "On with FromBeginning()", bus.On(typ, "caps.beginning", nop, ripple.FromBeginning()))
	check(s.caps.StartFrom, "On with StartFrom(t)", bus.On(typ, "caps.from", nop, ripple.StartFrom(time.Now().Add(-time.Hour))))
	// Options every transport honours are always accepted.
	if err := bus.On(typ, "caps.plain", nop, ripple.Concurrency(2), ripple.RateLimit(10, time.Second),
		ripple.MaxAttempts(2), ripple.Backoff(time.Millisecond, time.Second), ripple.Timeout(time.Second), ripple.Lease(time.Second)); err != nil {
		t.Fatalf("On with the options every transport honours: %v", err)
	}
	if _, err := bus.Publish(bg, typ, 1, ripple.WithPriority(0), ripple.WithDelay(0), ripple.WithKey("k")); err != nil {
		t.Errorf("Publish with default priority, zero delay and a key: %v", err)
	}
	if err := bus.Start(bg); err != nil {
		t.Errorf("Start: %v", err)
	}
	// Administration of a subscribed handler.
	check(s.replayer, "Replay", second(bus.Replay(bg, "caps.plain", time.Now())))
	check(s.inspector, "Stats", second(bus.Stats(bg)))
	check(s.dlq, "DeadLetters", second(bus.DeadLetters(bg, "caps.plain", 10)))
	check(s.dlq, "RequeueAllDead", second(bus.RequeueAllDead(bg, "caps.plain")))
	check(s.dlq, "PurgeAllDead", second(bus.PurgeAllDead(bg, "caps.plain")))
	_, pauser := s.driver(t, bus).(transport.Pauser)
	check(pauser, "Pause", bus.Pause(bg, "caps.plain"))
	check(pauser, "Resume", bus.Resume(bg, "caps.plain"))
}

// testInvalidInput: bad names, patterns, payloads and options fail with
// the right sentinel error and a message that says what was wrong.
func testInvalidInput(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t), ripple.MaxEventSize(1024))
	nop := func(context.Context, ripple.Event) error { return nil }
	long := strings.Repeat("a", 250) + ".bcdef" // 256 bytes

	for _, name := range []string{"", "*", ">", "user", "a.*.b", "a.>", "$JS.x", "a..b", ".a.b", "a.b.", "User.created", "USER_CREATED",
		"user created.x", "user.sign up", "üser.created", "a/b.c", long} {
		if _, err := bus.Publish(bg, name, 1); !errors.Is(err, ripple.ErrInvalidName) {
			t.Errorf("Publish(%q): %v, want an error matching ErrInvalidName", name, err)
		}
	}
	for _, pattern := range []string{"", "*", "a.>.b", "a..b", "A.b", "a.b*", "a.>>", "a b.c", "$JS.>", long} {
		if err := bus.On(pattern, "bad.pattern", nop); !errors.Is(err, ripple.ErrInvalidName) {
			t.Errorf("On(%q): %v, want an error matching ErrInvalidName", pattern, err)
		}
	}
	for _, name := range []string{"", "Bad", "-lead", "a b", "a/b", "a*", strings.Repeat("h", 129)} {
		if err := bus.On("conformance.input.checked", name, nop); !errors.Is(err, ripple.ErrInvalidName) {
			t.Errorf("On with handler name %q: %v, want an error matching ErrInvalidName", name, err)
		}
	}

	const typ = "conformance.input.checked"
	if _, err := bus.Publish(bg, typ, nil); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("Publish(nil payload): %v, want ErrInvalidOption", err)
	}
	if _, err := bus.Publish(bg, typ, make(chan int)); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("Publish(unencodable payload): %v, want ErrInvalidOption", err)
	}
	if _, err := bus.Publish(bg, typ, make([]byte, 1025)); !errors.Is(err, ripple.ErrTooLarge) {
		t.Errorf("Publish(1025 bytes) with MaxEventSize(1024): %v, want ErrTooLarge", err)
	}
	if _, err := bus.Publish(bg, typ, make([]byte, 512)); err != nil {
		t.Errorf("Publish(512 bytes) with MaxEventSize(1024): %v, want success", err)
	}
	// The limit covers the whole event, headers included.
	if _, err := bus.Publish(bg, typ, 1, ripple.WithHeader("note", strings.Repeat("x", 2048))); !errors.Is(err, ripple.ErrTooLarge) {
		t.Errorf("Publish with a 2 KiB header and MaxEventSize(1024): %v, want ErrTooLarge", err)
	}
	if _, err := bus.Publish(bg, typ, 1, ripple.WithDelay(-time.Second)); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("Publish WithDelay(-1s): %v, want ErrInvalidOption", err)
	}
	if _, err := bus.Publish(bg, typ, 1, ripple.WithHeader("Bad Header", "x")); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("Publish WithHeader(\"Bad Header\"): %v, want ErrInvalidOption", err)
	}
	for what, opt := range map[string]ripple.HandlerOption{
		"Concurrency(0)":          ripple.Concurrency(0),
		"MaxAttempts(0)":          ripple.MaxAttempts(0),
		"RateLimit(0, 1s)":        ripple.RateLimit(0, time.Second),
		"Backoff(0, 1s)":          ripple.Backoff(0, time.Second),
		"Backoff(2s, 1s)":         ripple.Backoff(2*time.Second, time.Second),
		"Timeout(0)":              ripple.Timeout(0),
		"Lease(time.Microsecond)": ripple.Lease(time.Microsecond),
	} {
		if err := bus.On(typ, "bad.option", nop, opt); !errors.Is(err, ripple.ErrInvalidOption) {
			t.Errorf("On with %s: %v, want ErrInvalidOption", what, err)
		}
	}
	if err := bus.On(typ, "nil.func", nil); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("On with a nil func: %v, want ErrInvalidOption", err)
	}

	on(t, bus, typ, "input.handler", nop)
	if err := bus.On("conformance.other.checked", "input.handler", nop); !errors.Is(err, ripple.ErrDuplicateHandler) {
		t.Errorf("On with a handler name already registered: %v, want ErrDuplicateHandler", err)
	}
	start(t, bus)
	if err := bus.On(typ, "input.handler", nop); !errors.Is(err, ripple.ErrDuplicateHandler) {
		t.Errorf("On after Start with a handler name already registered: %v, want ErrDuplicateHandler", err)
	}
	if _, err := ripple.Open(bg, s.h.NewURL(t), append(append([]ripple.Option(nil), s.h.Options...), ripple.MaxEventSize(0))...); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("Open with MaxEventSize(0): %v, want ErrInvalidOption", err)
	}
}

// testClosed: calls on a closed bus return ErrClosed.
func testClosed(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ = "conformance.closed.checked"
	nop := func(context.Context, ripple.Event) error { return nil }
	on(t, bus, typ, "closed.handler", nop)
	start(t, bus)
	publish(t, bus, typ, 1)
	if err := bus.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-bus.Stopped():
	default:
		t.Errorf("Stopped() is not closed after Close returned")
	}
	if err := bus.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	wantErr(t, "Publish after Close", second(bus.Publish(bg, typ, 1)), ripple.ErrClosed)
	wantErr(t, "On after Close", bus.On(typ, "closed.other", nop), ripple.ErrClosed)
	wantErr(t, "Start after Close", bus.Start(bg), ripple.ErrClosed)
	if s.inspector {
		wantErr(t, "Stats after Close", second(bus.Stats(bg)), ripple.ErrClosed)
	}
	if s.dlq {
		wantErr(t, "DeadLetters after Close", second(bus.DeadLetters(bg, "closed.handler", 10)), ripple.ErrClosed)
		wantErr(t, "RequeueDead after Close", second(bus.RequeueDead(bg, "closed.handler", "x")), ripple.ErrClosed)
		wantErr(t, "PurgeDead after Close", second(bus.PurgeDead(bg, "closed.handler", "x")), ripple.ErrClosed)
	}
	if s.replayer {
		wantErr(t, "Replay after Close", second(bus.Replay(bg, "closed.handler", time.Now())), ripple.ErrClosed)
	}
}

// testShutdownStuck: Shutdown(ctx) with a handler running past ctx returns
// ctx.Err(), and the event is delivered again later without its attempt
// counted.
func testShutdownStuck(t *testing.T, s *suite) { shutdownStuck(t, s, false) }

// testShutdownStuckIdempotent: as testShutdownStuck, for an Idempotent
// handler that takes a moment to return once cancelled. The cut-off
// attempt gives up its claim, so the event is handled again at once
// rather than once the claim expires.
func testShutdownStuckIdempotent(t *testing.T, s *suite) {
	if !s.claimer {
		t.Skipf("the %s transport has no idempotency claims", s.name)
	}
	shutdownStuck(t, s, true)
}

func shutdownStuck(t *testing.T, s *suite, idempotent bool) {
	url := s.h.NewURL(t)
	const typ, name = "conformance.shutdown.stuck", "shutdown.handler"
	var keeper *ripple.Bus
	if !s.caps.Durable {
		// A non-durable store lives only while a bus has it open.
		keeper = s.open(t, url)
	}
	opts := []ripple.HandlerOption{ripple.Lease(time.Minute)}
	if idempotent {
		// The claim of an attempt outlasts its Timeout, here well past
		// the wait below.
		opts = append(opts, ripple.Idempotent(), ripple.Timeout(time.Minute))
	}
	bus := s.open(t, url)
	started := make(chan ripple.Event, 1)
	on(t, bus, typ, name, func(ctx context.Context, e ripple.Event) error {
		started <- e
		<-ctx.Done()
		if idempotent {
			time.Sleep(20 * time.Millisecond) // cleaning up
		}
		return ctx.Err()
	}, opts...)
	start(t, bus)
	pub := publish(t, bus, typ, map[string]int{})
	if e := recv(t, started, "the handler to start"); e.ID != pub.ID || e.Attempt != 1 {
		t.Fatalf("handler got %s attempt %d, want %s attempt 1", e.ID, e.Attempt, pub.ID)
	}
	ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
	defer cancel()
	if err := bus.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a handler stuck past ctx: %v, want context.DeadlineExceeded", err)
	}
	wantErr(t, "Publish after an interrupted Shutdown", second(bus.Publish(bg, typ, 1)), ripple.ErrClosed)

	if keeper == nil {
		keeper = s.open(t, url)
	}
	var rec recorder
	on(t, keeper, typ, name, rec.handler("", nil), opts...)
	start(t, keeper)
	// The one-minute lease rules out redelivery by lease expiry within the
	// wait: the event must have been handed back.
	rec.waitSucceeded(t, "the interrupted event to be delivered again", pub.ID)
	if c := rec.of(pub.ID)[0]; c.ev.Attempt != 1 {
		t.Errorf("event interrupted by Shutdown came back with Attempt %d, want 1 (a shutdown does not use an attempt)", c.ev.Attempt)
	}
}
