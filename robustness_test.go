package ripple_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
)

// failingSubscribe fails the Subscribe of some handler names a set
// number of times each, as a network error would.
type failingSubscribe struct {
	transport.Driver
	mu    sync.Mutex
	fails map[string]int
}

func (f *failingSubscribe) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	f.mu.Lock()
	fail := f.fails[s.Name] > 0
	f.fails[s.Name]--
	f.mu.Unlock()
	if fail {
		return nil, errors.New("connection reset")
	}
	return f.Driver.Subscribe(ctx, s)
}

func nop(context.Context, ripple.Event) error { return nil }

// within fails the test when fn does not return within 2 s.
func within(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Second):
		t.Fatalf("%s did not return (deadlock)", what)
		return nil
	}
}

// TestSubscribeErrorIsReturned checks that a Subscribe error from the
// transport comes back from Start, and from On on a started bus, and
// that the bus goes on working.
func TestSubscribeErrorIsReturned(t *testing.T) {
	ctx := context.Background()
	d := &failingSubscribe{Driver: memory.New(transport.Retention{}), fails: map[string]int{"h2": 2, "h3": 1}}
	bus, err := ripple.New(d)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	if err := bus.On("a.b", "h1", nop); err != nil {
		t.Fatal(err)
	}
	if err := bus.On("a.b", "h2", nop); err != nil {
		t.Fatal(err)
	}
	if err := within(t, "Start", func() error { return bus.Start(ctx) }); err == nil {
		t.Fatal("Start succeeded although h2's Subscribe failed")
	}
	// Start again: h1, started and undone by the failed Start, starts
	// afresh; h2's Subscribe fails a second time.
	if err := within(t, "Start", func() error { return bus.Start(ctx) }); err == nil {
		t.Fatal("second Start succeeded although h2's Subscribe failed")
	}
	if err := within(t, "Start", func() error { return bus.Start(ctx) }); err != nil {
		t.Fatalf("third Start: %v", err)
	}
	if err := within(t, "On", func() error { return bus.On("a.b", "h3", nop) }); err == nil {
		t.Fatal("On on a started bus succeeded although Subscribe failed")
	}
	if _, err := bus.Publish(ctx, "a.b", map[string]int{"n": 1}); err != nil {
		t.Fatalf("Publish after the failures: %v", err)
	}
	if err := within(t, "Close", bus.Close); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestNewRefusesRetentionOptions checks that New, whose driver is already
// open, refuses the options that only configure a transport being opened.
func TestNewRefusesRetentionOptions(t *testing.T) {
	d := memory.New(transport.Retention{})
	for _, o := range []ripple.Option{ripple.KeepCompleted(10, 0), ripple.KeepDead(10, 0), ripple.DedupWindow(time.Minute)} {
		if _, err := ripple.New(d, o); !errors.Is(err, ripple.ErrInvalidOption) || !strings.Contains(err.Error(), "transport.Config") {
			t.Errorf("New with a retention option = %v, want ErrInvalidOption saying where retention goes", err)
		}
	}
	bus, err := ripple.New(d, ripple.MaxEventSize(1<<20))
	if err != nil {
		t.Fatalf("New with a bus option: %v", err)
	}
	bus.Close()
}

// TestIdempotentAbandonedAttemptStillDecides runs an idempotent handler
// whose first attempt ignores its cancelled ctx, is abandoned, and then
// succeeds: the retry must neither run beside it nor run again after it.
func TestIdempotentAbandonedAttemptStillDecides(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var mu sync.Mutex
	running, overlapped, succeeded := 0, false, 0
	err = bus.On("a.b", "h", func(ctx context.Context, e ripple.Event) error {
		mu.Lock()
		running++
		overlapped = overlapped || running > 1
		mu.Unlock()
		if e.Attempt == 1 {
			time.Sleep(2500 * time.Millisecond) // past Timeout and the 2 s grace
		}
		mu.Lock()
		running--
		succeeded++
		mu.Unlock()
		return nil
	}, ripple.Idempotent(), ripple.Timeout(50*time.Millisecond), ripple.Backoff(time.Millisecond, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "a.b", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if overlapped || succeeded != 1 {
		t.Fatalf("ran to success %d times, overlapping: %v; want once, alone", succeeded, overlapped)
	}
}

// receiveWithError returns its first Receive's deliveries together with
// an error, which the contract does not rule out.
type receiveWithError struct {
	transport.Driver
}

func (d receiveWithError) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	sub, err := d.Driver.Subscribe(ctx, s)
	return &erroringSub{Subscription: sub}, err
}

type erroringSub struct {
	transport.Subscription
	once sync.Once
}

func (s *erroringSub) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	ds, err := s.Subscription.Receive(ctx, max)
	if err == nil {
		s.once.Do(func() { err = errors.New("connection reset after the read") })
	}
	return ds, err
}

// TestDeliveriesReceivedWithAnErrorAreHandled checks that deliveries that
// come with a Receive error are handled, and that their slots are not
// lost: with Concurrency(1), every later event is handled too.
func TestDeliveriesReceivedWithAnErrorAreHandled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus, err := ripple.New(receiveWithError{memory.New(transport.Retention{})})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	handled := make(chan string, 10)
	if err := bus.On("a.b", "h", func(_ context.Context, e ripple.Event) error { handled <- e.ID; return nil }, ripple.Concurrency(1)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := bus.Publish(ctx, "a.b", map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	second, err := bus.Publish(ctx, "a.b", map[string]int{"n": 2})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{first.ID: true, second.ID: true}
	for len(want) > 0 {
		select {
		case got := <-handled:
			delete(want, got)
		case <-time.After(3 * time.Second):
			t.Fatalf("not handled: %v", want)
		}
	}
}

// lateReceive holds its first Receive's deliveries until receiving has
// been stopped and the test lets them go, as a transport whose read
// returns just as the bus shuts down. received is closed once the
// deliveries are held.
type lateReceive struct {
	transport.Driver
	received chan struct{}
	release  chan struct{}
}

func (d lateReceive) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	sub, err := d.Driver.Subscribe(ctx, s)
	return &lateSub{Subscription: sub, received: d.received, release: d.release}, err
}

type lateSub struct {
	transport.Subscription
	received chan struct{}
	release  chan struct{}
	once     sync.Once
}

func (s *lateSub) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	ds, err := s.Subscription.Receive(ctx, max)
	s.once.Do(func() {
		close(s.received)
		<-ctx.Done()
		<-s.release
	})
	return ds, err
}

// TestDeliveryReceivedAfterAbortIsNotHandled checks that a delivery whose
// Receive returns after a shutdown gave up waiting is not handled: the
// handler would run after Shutdown returned, unwatched, on a closed
// subscription.
func TestDeliveryReceivedAfterAbortIsNotHandled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	received, release := make(chan struct{}), make(chan struct{})
	bus, err := ripple.New(lateReceive{Driver: memory.New(transport.Retention{}), received: received, release: release})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	if err := bus.On("a.b", "h", func(context.Context, ripple.Event) error { calls.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "a.b", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	// A Shutdown before the receive loop has called Receive may stop the
	// loop first, and then there is nothing to give up on.
	select {
	case <-received:
	case <-time.After(2 * time.Second):
		t.Fatal("the event was not received")
	}
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := bus.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want it to give up waiting for the receive", err)
	}
	close(release)
	time.Sleep(300 * time.Millisecond)
	if n := calls.Load(); n != 0 {
		t.Fatalf("handler ran %d times after Shutdown returned", n)
	}
}

// TestRateLimitAfterIdle checks that a handler idle for longer than its
// rate period starts no more events at once than the limit allows: the
// receive loop must not spend a slot of the limit before an event is
// there to use it.
func TestRateLimitAfterIdle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := newMemoryBus(t)
	var mu sync.Mutex
	var starts []time.Time
	err := bus.On("a.b", "h", func(context.Context, ripple.Event) error {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		return nil
	}, ripple.RateLimit(1, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // idle past the period
	for i := range 3 {
		if _, err := bus.Publish(ctx, "a.b", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(starts) != 1 {
		t.Fatalf("RateLimit(1, 2s) started %d events within 1 s after an idle spell, want 1", len(starts))
	}
}

// settleRecorder records the outcomes its subscriptions settle.
type settleRecorder struct {
	transport.Driver
	mu       sync.Mutex
	outcomes map[string]transport.Outcome
}

func (d *settleRecorder) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	sub, err := d.Driver.Subscribe(ctx, s)
	return &recordingSub{Subscription: sub, d: d}, err
}

type recordingSub struct {
	transport.Subscription
	d *settleRecorder
}

func (s *recordingSub) Settle(ctx context.Context, ss []transport.Settlement) error {
	s.d.mu.Lock()
	for _, x := range ss {
		s.d.outcomes[x.Delivery.ID] = x.Outcome
	}
	s.d.mu.Unlock()
	return s.Subscription.Settle(ctx, ss)
}

// TestRateLimitedDeliveryReleasedAtShutdown checks that a delivery
// waiting for its slot of the rate limit when the bus shuts down is
// handed back, not run, and does not hold up the shutdown.
func TestRateLimitedDeliveryReleasedAtShutdown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := &settleRecorder{Driver: memory.New(transport.Retention{}), outcomes: map[string]transport.Outcome{}}
	bus, err := ripple.New(d)
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 2)
	err = bus.On("a.b", "h", func(_ context.Context, e ripple.Event) error {
		handled <- e.ID
		return nil
	}, ripple.RateLimit(1, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := bus.Publish(ctx, "a.b", map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	second, err := bus.Publish(ctx, "a.b", map[string]int{"n": 2})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-handled:
		if id != first.ID {
			t.Fatalf("handled %s first, want %s", id, first.ID)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("first event not handled")
	}
	time.Sleep(100 * time.Millisecond) // the second is received and waits for the limit
	if err := within(t, "Shutdown", func() error { return bus.Shutdown(ctx) }); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case id := <-handled:
		t.Fatalf("handled %s although the limit allowed no second start", id)
	default:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if got := d.outcomes[second.ID]; got != transport.Release {
		t.Fatalf("event waiting for the rate limit at shutdown was settled %v, want Release", got)
	}
}

// hangingDriver simulates a server that stops answering once hung is
// set: Settle waits out its ctx, and closing a subscription takes hang.
type hangingDriver struct {
	transport.Driver
	hang       time.Duration
	hung       atomic.Bool
	slowSettle time.Duration // every Settle takes this long
	released   atomic.Int32  // Release settlements recorded
	subsClosed atomic.Int32
	closed     atomic.Bool
}

func (d *hangingDriver) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	sub, err := d.Driver.Subscribe(ctx, s)
	return &hangingSub{Subscription: sub, d: d}, err
}

func (d *hangingDriver) Close() error {
	err := d.Driver.Close()
	d.closed.Store(true)
	return err
}

type hangingSub struct {
	transport.Subscription
	d *hangingDriver
}

func (s *hangingSub) Settle(ctx context.Context, ss []transport.Settlement) error {
	if s.d.hung.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.d.hang):
			return errors.New("i/o timeout")
		}
	}
	time.Sleep(s.d.slowSettle)
	err := s.Subscription.Settle(ctx, ss)
	for _, st := range ss {
		if err == nil && st.Outcome == transport.Release {
			s.d.released.Add(1)
		}
	}
	return err
}

func (s *hangingSub) Close() error {
	if s.d.hung.Load() {
		time.Sleep(s.d.hang)
	}
	err := s.Subscription.Close()
	s.d.subsClosed.Add(1)
	return err
}

// TestShutdownBoundedWhenTransportHangs checks that Close returns soon
// after ShutdownTimeout even when the transport stops answering, with the
// handler it cut off cancelled, and that a second call waits until the
// first has closed the subscriptions and the transport.
func TestShutdownBoundedWhenTransportHangs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := &hangingDriver{Driver: memory.New(transport.Retention{}), hang: 3 * time.Second}
	bus, err := ripple.New(d, ripple.ShutdownTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan context.Context, 1)
	unblock := make(chan struct{})
	defer close(unblock)
	// The handler ignores its ctx, so the wait runs out and the bus
	// aborts.
	err = bus.On("a.b", "stuck", func(ctx context.Context, _ ripple.Event) error {
		started <- ctx
		<-unblock
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := bus.On("c.d", "idle"+strconv.Itoa(i), nop); err != nil {
			t.Fatal(err)
		}
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "a.b", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	var hctx context.Context
	select {
	case hctx = <-started:
	case <-time.After(2 * time.Second):
		t.Fatal("handler did not start")
	}
	d.hung.Store(true)

	begin := time.Now()
	err = bus.Close()
	elapsed := time.Since(begin)
	t.Logf("Close returned after %s", elapsed.Round(time.Millisecond))
	if elapsed > 2*time.Second {
		t.Errorf("Close with ShutdownTimeout(300ms) took %s on a hung transport", elapsed.Round(time.Millisecond))
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want context.DeadlineExceeded", err)
	}
	if hctx.Err() == nil {
		t.Error("the handler cut off by Close still has a live ctx")
	}

	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := bus.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Shutdown = %v, want the first's context.DeadlineExceeded", err)
	}
	if n, closed := d.subsClosed.Load(), d.closed.Load(); n != 4 || !closed {
		t.Errorf("second Shutdown returned with %d of 4 subscriptions closed, transport closed: %v; want it to wait for the first to finish", n, closed)
	}
}

// stuckSubscribe's Subscribe of handler "late" waits for release, as a
// transport that stopped answering would.
type stuckSubscribe struct {
	transport.Driver
	entered chan struct{}
	release chan struct{}
}

func (d stuckSubscribe) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	if s.Name == "late" {
		close(d.entered)
		<-d.release
	}
	return d.Driver.Subscribe(ctx, s)
}

// TestShutdownBoundedWhileSubscribing checks that Shutdown returns when
// its ctx ends though a Start, or an On on a started bus, is waiting for
// the transport to create a subscription; that call then returns ErrClosed
// and leaves nothing running.
func TestShutdownBoundedWhileSubscribing(t *testing.T) {
	t.Parallel()
	for _, viaOn := range []bool{false, true} {
		ctx := context.Background()
		d := stuckSubscribe{Driver: memory.New(transport.Retention{}), entered: make(chan struct{}), release: make(chan struct{})}
		bus, err := ripple.New(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.On("a.b", "h", nop); err != nil {
			t.Fatal(err)
		}
		var ran atomic.Int32
		late := func(context.Context, ripple.Event) error { ran.Add(1); return nil }
		setup := make(chan error, 1)
		if viaOn {
			if err := bus.Start(ctx); err != nil {
				t.Fatal(err)
			}
			go func() { setup <- bus.On("c.d", "late", late) }()
		} else {
			if err := bus.On("c.d", "late", late); err != nil {
				t.Fatal(err)
			}
			go func() { setup <- bus.Start(ctx) }()
		}
		<-d.entered
		sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		stopped := make(chan error, 1)
		go func() { stopped <- bus.Shutdown(sctx) }()
		select {
		case err := <-stopped:
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("via On %v: Shutdown = %v", viaOn, err)
			}
		case <-time.After(2 * time.Second):
			close(d.release)
			t.Fatalf("via On %v: Shutdown with a 100ms ctx had not returned after 2s while a subscription was being created", viaOn)
		}
		cancel()
		close(d.release)
		if err := <-setup; !errors.Is(err, ripple.ErrClosed) {
			t.Fatalf("via On %v: the call creating the subscription returned %v after Shutdown, want ErrClosed", viaOn, err)
		}
		if _, err := bus.Publish(ctx, "c.d", 1); err == nil {
			t.Fatalf("via On %v: Publish after Shutdown succeeded", viaOn)
		}
		time.Sleep(100 * time.Millisecond)
		if n := ran.Load(); n != 0 {
			t.Fatalf("via On %v: the late handler ran %d times after Shutdown", viaOn, n)
		}
	}
}

// TestCloseHandsBackBeforeReturning checks that Close, cutting off a
// handler that ignores its ctx, has handed its event back to a responsive
// transport by the time it returns, so a program that exits right after
// `defer bus.Close()` does not leave the event to wait for its lease.
func TestCloseHandsBackBeforeReturning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := &hangingDriver{Driver: memory.New(transport.Retention{}), slowSettle: 100 * time.Millisecond}
	bus, err := ripple.New(d, ripple.ShutdownTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	started, unblock := make(chan struct{}), make(chan struct{})
	defer close(unblock)
	err = bus.On("a.b", "stuck", func(context.Context, ripple.Event) error {
		close(started)
		<-unblock
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "a.b", 1); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := bus.Close(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want context.DeadlineExceeded", err)
	}
	if n := d.released.Load(); n != 1 {
		t.Fatalf("when Close returned, %d events had been handed back, want 1", n)
	}
}

// TestShutdownDuringStartRunsNothing checks that a Shutdown that begins
// while Start is creating subscriptions finds no handler running: Start
// runs none until every subscription exists, and then only if Shutdown
// has not begun.
func TestShutdownDuringStartRunsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := stuckSubscribe{Driver: memory.New(transport.Retention{}), entered: make(chan struct{}), release: make(chan struct{})}
	bus, err := ripple.New(d)
	if err != nil {
		t.Fatal(err)
	}
	var ran atomic.Int32
	if err := bus.On("a.b", "h", func(context.Context, ripple.Event) error { ran.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := bus.On("c.d", "late", nop); err != nil {
		t.Fatal(err)
	}
	startErr := make(chan error, 1)
	go func() { startErr <- bus.Start(ctx) }()
	<-d.entered // h is subscribed; Start waits on "late"
	if _, err := bus.Publish(ctx, "a.b", 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := bus.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	close(d.release)
	if err := <-startErr; !errors.Is(err, ripple.ErrClosed) {
		t.Fatalf("Start = %v, want ErrClosed", err)
	}
	if n := ran.Load(); n != 0 {
		t.Fatalf("handler h ran %d times during a Start that Shutdown overtook", n)
	}
}

// TestUnsubscribeWhileHandlerCallsOn checks that a handler being
// unsubscribed can still call On: Unsubscribe does not wait for its drain
// while holding what On needs.
func TestUnsubscribeWhileHandlerCallsOn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	onErr := make(chan error, 1)
	bus, proceed := runningHandler(t, func(bus *ripple.Bus) { onErr <- bus.On("x.y", "dynamic", nop) })
	uctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	unsub := make(chan error, 1)
	go func() { unsub <- bus.Unsubscribe(uctx, "h") }()
	time.Sleep(100 * time.Millisecond) // Unsubscribe waits for h's handler
	close(proceed)
	if err := <-unsub; err != nil {
		t.Fatalf("Unsubscribe = %v; want nil: the handler finishes once its On returns", err)
	}
	if err := <-onErr; err != nil {
		t.Fatalf("On from the handler = %v", err)
	}
}

// TestStartRacesShutdown runs Start again and again beside Close, for the
// race detector.
func TestStartRacesShutdown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for range 100 {
		bus, err := ripple.New(memory.New(transport.Retention{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.On("a.b", "h", nop); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 50 {
					_ = bus.Start(ctx)
				}
			}()
		}
		_ = bus.Close()
		wg.Wait()
	}
}

// TestShutdownWaitsForHandlerBeingUnsubscribed checks that a Shutdown
// that begins while Unsubscribe waits for a handler waits for it too,
// instead of closing the transport under it.
func TestShutdownWaitsForHandlerBeingUnsubscribed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var finished atomic.Bool
	bus, proceed := runningHandler(t, func(*ripple.Bus) { finished.Store(true) })
	unsub := make(chan error, 1)
	go func() { unsub <- bus.Unsubscribe(ctx, "h") }()
	time.Sleep(50 * time.Millisecond) // Unsubscribe waits for h
	time.AfterFunc(300*time.Millisecond, func() { close(proceed) })
	if err := bus.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if !finished.Load() {
		t.Fatal("Shutdown returned while the handler being unsubscribed was still running")
	}
	if err := <-unsub; !errors.Is(err, ripple.ErrClosed) {
		t.Fatalf("Unsubscribe overtaken by Shutdown = %v, want ErrClosed", err)
	}
}

// TestHandlerUnsubscribingItselfIsRefused checks that a handler calling
// Unsubscribe on itself, which would wait for itself, gets an error that
// says what to do at once.
func TestHandlerUnsubscribingItselfIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := newMemoryBus(t)
	uerr := make(chan error, 1)
	if err := bus.On("a.b", "h", func(hctx context.Context, _ ripple.Event) error {
		uerr <- bus.Unsubscribe(hctx, "h")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "a.b", 1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-uerr:
		if err == nil || !strings.Contains(err.Error(), "another goroutine") {
			t.Fatalf("Unsubscribe from its own handler = %v, want an error saying to call it on another goroutine", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Unsubscribe from its own handler did not return")
	}
}

// TestUnsubscribeBeforeStart checks that unsubscribing a handler
// registered but never started removes it and succeeds.
func TestUnsubscribeBeforeStart(t *testing.T) {
	t.Parallel()
	bus := newMemoryBus(t)
	if err := bus.On("a.b", "h", nop); err != nil {
		t.Fatal(err)
	}
	if err := bus.Unsubscribe(context.Background(), "h"); err != nil {
		t.Fatalf("Unsubscribe before Start = %v", err)
	}
	if hs := bus.Handlers(); len(hs) != 0 {
		t.Fatalf("Handlers() = %v after Unsubscribe, want none", hs)
	}
}

// TestUnsubscribeUnstartedRacesStart checks that unsubscribing handlers
// never started, beside a Start, leaves none of them running unowned: an
// Unsubscribe that succeeded means the handler handles nothing more.
func TestUnsubscribeUnstartedRacesStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 32
	for iter := range 150 {
		bus, err := ripple.New(memory.New(transport.Retention{}))
		if err != nil {
			t.Fatal(err)
		}
		var calls [n]atomic.Int32
		for i := range n {
			if err := bus.On("a.b", "h"+strconv.Itoa(i), func(context.Context, ripple.Event) error {
				calls[i].Add(1)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		uerr := make([]error, n)
		begin := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-begin
				uerr[i] = bus.Unsubscribe(ctx, "h"+strconv.Itoa(i))
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-begin
			if err := bus.Start(ctx); err != nil {
				t.Error(err)
			}
		}()
		close(begin)
		wg.Wait()
		if _, err := bus.Publish(ctx, "a.b", 1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		if err := bus.Close(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if uerr[i] == nil && calls[i].Load() > 0 {
				t.Fatalf("iteration %d: Unsubscribe(h%d) returned nil, yet h%d handled an event published afterwards", iter, i, i)
			}
		}
	}
}

// TestShutdownAfterUnsubscribeGaveUp checks that a Shutdown waits for a
// handler that an Unsubscribe cut off and took off the bus when its ctx
// ended, until the handler returns.
func TestShutdownAfterUnsubscribeGaveUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var finished atomic.Bool
	bus, proceed := runningHandler(t, func(*ripple.Bus) { finished.Store(true) })
	uctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := bus.Unsubscribe(uctx, "h"); err == nil {
		t.Fatal("Unsubscribe returned nil while the handler was running")
	}
	time.AfterFunc(500*time.Millisecond, func() { close(proceed) })
	if err := bus.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if !finished.Load() {
		t.Fatal("Shutdown returned while a handler of this bus was still running")
	}
}

// runningHandler starts a bus whose handler "h" is running an event: it
// waits for proceed to close (a slow step that does not watch its ctx),
// then calls then, and returns.
func runningHandler(t *testing.T, then func(*ripple.Bus)) (bus *ripple.Bus, proceed chan struct{}) {
	t.Helper()
	ctx := context.Background()
	bus = newMemoryBus(t)
	running, proceed := make(chan struct{}), make(chan struct{})
	if err := bus.On("a.b", "h", func(context.Context, ripple.Event) error {
		close(running)
		<-proceed
		then(bus)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "a.b", 1); err != nil {
		t.Fatal(err)
	}
	<-running
	return bus, proceed
}

// newMemoryBus returns a bus on a fresh memory transport, closed when the
// test ends.
func newMemoryBus(t *testing.T) *ripple.Bus {
	t.Helper()
	bus, err := ripple.New(memory.New(transport.Retention{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	return bus
}

// TestRunSaysWhatOutlastedShutdownTimeout checks that Run's error names
// the part of the shutdown that ran out of time: a stuck handler, or a
// transport slow to close after every handler finished.
func TestRunSaysWhatOutlastedShutdownTimeout(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, stuck bool) error {
		d := &hangingDriver{Driver: memory.New(transport.Retention{}), hang: 2 * time.Second}
		bus, err := ripple.New(d, ripple.ShutdownTimeout(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{}, 1)
		unblock := make(chan struct{})
		defer close(unblock)
		err = bus.On("a.b", "h", func(context.Context, ripple.Event) error {
			started <- struct{}{}
			if stuck {
				<-unblock // ignores its ctx
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := bus.Start(ctx); err != nil {
			t.Fatal(err)
		}
		ran := make(chan error, 1)
		go func() { ran <- bus.Run(ctx) }()
		if _, err := bus.Publish(context.Background(), "a.b", map[string]int{"n": 1}); err != nil {
			t.Fatal(err)
		}
		<-started
		if !stuck {
			// Let the handler's completion settle before the transport
			// hangs.
			time.Sleep(50 * time.Millisecond)
			d.hung.Store(true)
		}
		cancel()
		select {
		case err := <-ran:
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return")
			return nil
		}
	}
	t.Run("stuck handler", func(t *testing.T) {
		err := run(t, true)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "handlers still running") {
			t.Errorf("Run = %v, want an error saying handlers were still running", err)
		}
	})
	t.Run("slow transport", func(t *testing.T) {
		err := run(t, false)
		if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "handlers still running") || !strings.Contains(err.Error(), "closing the memory transport") {
			t.Errorf("Run = %v, want an error saying the transport's close outlasted ShutdownTimeout", err)
		}
	})
}
