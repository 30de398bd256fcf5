package ripple_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
)

type tenantKey struct{}

// A handler's ctx carries the values of the ctx the bus was started with,
// for handlers registered before and after Start, and the cancellation of
// Start's ctx does not reach it.
func TestHandlerContextCarriesStartValues(t *testing.T) {
	bus, err := ripple.Open(context.Background(), "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	got := make(chan string, 2)
	handler := func(ctx context.Context, e ripple.Event) error {
		v, _ := ctx.Value(tenantKey{}).(string)
		if ctx.Err() != nil {
			v += " (cancelled)"
		}
		if _, ok := ripple.EventFromContext(ctx); !ok {
			v += " (no event)"
		}
		got <- e.Handler + ":" + v
		return nil
	}
	if err := bus.On("tenant.seen", "before", handler); err != nil {
		t.Fatal(err)
	}
	startCtx, cancel := context.WithCancel(context.WithValue(context.Background(), tenantKey{}, "acme"))
	if err := bus.Start(startCtx); err != nil {
		t.Fatal(err)
	}
	cancel() // bounds Start only
	if err := bus.On("tenant.seen", "after", handler); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(context.Background(), "tenant.seen", struct{}{}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 2 {
		select {
		case s := <-got:
			seen[s] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("handlers did not run; seen %v", seen)
		}
	}
	if !seen["before:acme"] || !seen["after:acme"] {
		t.Errorf("handler contexts carried %v, want before:acme and after:acme", seen)
	}
}

// outcomeHook records the outcomes reported to HandleHooks.
type outcomeHook struct {
	mu       sync.Mutex
	outcomes []ripple.Outcome
}

func (h *outcomeHook) OnHandle(res ripple.HandleResult) {
	h.mu.Lock()
	h.outcomes = append(h.outcomes, res.Outcome)
	h.mu.Unlock()
}

func (h *outcomeHook) all() []ripple.Outcome {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]ripple.Outcome(nil), h.outcomes...)
}

// A handler that returns nil after Shutdown's ctx ran out was cut off:
// its event was handed back, not completed, so the hooks must not hear of
// a success; the event is still waiting.
func TestShutdownReportsOnlyRecordedOutcomes(t *testing.T) {
	ctx := context.Background()
	url := fmt.Sprintf("memory://shutdown-report-%d", time.Now().UnixNano())
	keeper, err := ripple.Open(ctx, url) // keeps the store after the bus closes
	if err != nil {
		t.Fatal(err)
	}
	defer keeper.Close()
	hook := &outcomeHook{}
	bus, err := ripple.Open(ctx, url, ripple.WithHooks(hook))
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	returned := make(chan struct{})
	if err := bus.On("slow.job", "slow", func(ctx context.Context, e ripple.Event) error {
		close(entered)
		defer close(returned)
		<-ctx.Done() // cut off by Shutdown
		return nil   // and then claims success
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "slow.job", struct{}{}); err != nil {
		t.Fatal(err)
	}
	<-entered
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := bus.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want a deadline error", err)
	}
	select {
	case <-returned:
	case <-time.After(20 * time.Second):
		t.Fatal("the handler did not return after its ctx was cancelled")
	}
	<-bus.Stopped()
	for _, o := range hook.all() {
		if o == ripple.OutcomeSuccess {
			t.Errorf("hooks were told of a success the store never recorded (outcomes %v)", hook.all())
		}
	}
	stats, err := keeper.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) != 1 || stats[0].Waiting+stats[0].Active != 1 || stats[0].Completed != 0 {
		t.Errorf("the cut-off event: %+v, want it waiting (not completed)", stats)
	}
}

func TestPublishRefusesNilContextAndNullPayloads(t *testing.T) {
	bus, err := ripple.Open(context.Background(), "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	//lint:ignore SA1012 a nil ctx is what the test is about
	_, err = bus.Publish(nil, "order.placed", struct{}{}) //nolint:staticcheck
	if !errors.Is(err, ripple.ErrInvalidOption) || !strings.Contains(err.Error(), "ctx") {
		t.Errorf("Publish(nil ctx) = %v, want ErrInvalidOption naming the ctx", err)
	}
	type order struct{ ID int }
	var nilOrder *order
	var nilMap map[string]int
	for what, data := range map[string]any{"nil": nil, "typed nil pointer": nilOrder, "nil map": nilMap} {
		_, err := bus.Publish(context.Background(), "order.placed", data)
		if !errors.Is(err, ripple.ErrInvalidOption) {
			t.Errorf("Publish of a %s payload = %v, want ErrInvalidOption", what, err)
		}
	}
	if _, err := bus.Publish(context.Background(), "order.placed", json.RawMessage("{}")); err != nil {
		t.Errorf("Publish of {}: %v", err)
	}
}

func TestPermanentNilIsSuccess(t *testing.T) {
	if err := ripple.Permanent(nil); err != nil {
		t.Errorf("Permanent(nil) = %v, want nil", err)
	}
}

// RequeueDead and PurgeDead need ids: with none they refuse instead of
// acting on the whole queue, which RequeueAllDead and PurgeAllDead do.
func TestDeadLetterAdminNeedsIDsOrAll(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	var fail atomic.Bool
	fail.Store(true)
	if err := bus.On("card.charged", "charge", func(context.Context, ripple.Event) error {
		if fail.Load() {
			return ripple.Permanent(errors.New("declined"))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := bus.Publish(ctx, "card.charged", struct{}{}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		dead, err := bus.DeadLetters(ctx, "charge", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters, want 3", len(dead))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, err := bus.PurgeDead(ctx, "charge"); !errors.Is(err, ripple.ErrInvalidOption) || n != 0 {
		t.Errorf("PurgeDead with no ids = %d, %v; want 0 and ErrInvalidOption", n, err)
	}
	if n, err := bus.RequeueDead(ctx, "charge"); !errors.Is(err, ripple.ErrInvalidOption) || n != 0 {
		t.Errorf("RequeueDead with no ids = %d, %v; want 0 and ErrInvalidOption", n, err)
	}
	if dead, _ := bus.DeadLetters(ctx, "charge", 10); len(dead) != 3 {
		t.Errorf("%d dead letters left after refused calls, want 3", len(dead))
	}
	if n, err := bus.PurgeAllDead(ctx, "charge"); err != nil || n != 3 {
		t.Errorf("PurgeAllDead = %d, %v; want 3", n, err)
	}
	if n, err := bus.RequeueAllDead(ctx, "charge"); err != nil || n != 0 {
		t.Errorf("RequeueAllDead of an empty queue = %d, %v; want 0", n, err)
	}
}

// failingDriver fails every Publish with err.
type failingDriver struct {
	transport.Driver
	err error
}

func (f failingDriver) Publish(context.Context, []*transport.Message) error { return f.err }

// The transport's outcome-unknown, storage-full and damaged-store errors
// reach the caller matching Ripple's sentinels, with a message that says
// what happened.
func TestPublishErrorsMatchSentinels(t *testing.T) {
	for _, c := range []struct {
		sentinel error
		says     string
	}{
		{ripple.ErrOutcomeUnknown, "same id"},
		{ripple.ErrStorageFull, "full"},
		{ripple.ErrCorrupt, "damaged"},
	} {
		bus, err := ripple.New(failingDriver{memory.New(transport.Retention{}), fmt.Errorf("driver detail: %w", c.sentinel)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = bus.Publish(context.Background(), "order.placed", struct{}{})
		if !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "order.placed") {
			t.Errorf("Publish error %q: want it to match %v, name the event type and say %q", err, c.sentinel, c.says)
		}
		_ = bus.Close()
	}
}

// Idempotency claims key on the event's source and id: two events with
// one id under two sources both run.
func TestIdempotentClaimsKeyOnSource(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	ran := make(chan string, 4)
	if err := bus.On("sync.run", "sync", func(_ context.Context, e ripple.Event) error {
		ran <- e.Source
		return nil
	}, ripple.Idempotent()); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"urn:a", "urn:b"} {
		if _, err := bus.Publish(ctx, "sync.run", struct{}{}, ripple.WithID("job-1"), ripple.WithSource(src)); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for range 2 {
		select {
		case s := <-ran:
			seen[s] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("only %v ran; want both sources' events", seen)
		}
	}
}

// Options the transport cannot honour are refused, naming it.
func TestLifetimeOptionsRefusedWithoutCapability(t *testing.T) {
	bus, err := ripple.New(bareDriver{memory.New(transport.Retention{})})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	nop := func(context.Context, ripple.Event) error { return nil }
	for what, err := range map[string]error{
		"Ephemeral":     bus.On("a.b", "e", nop, ripple.Ephemeral()),
		"FromBeginning": bus.On("a.b", "f", nop, ripple.FromBeginning()),
		"StartFrom":     bus.On("a.b", "g", nop, ripple.StartFrom(time.Now())),
		"Pause":         bus.Pause(context.Background(), "e"),
		"Resume":        bus.Resume(context.Background(), "e"),
	} {
		if !errors.Is(err, ripple.ErrNotSupported) || !strings.Contains(err.Error(), "bare") {
			t.Errorf("%s on a transport without it: %v, want ErrNotSupported naming the transport", what, err)
		}
	}
	if err := bus.On("a.b", "h", nop, ripple.StartFrom(time.Time{})); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("StartFrom(zero) = %v, want ErrInvalidOption", err)
	}
}

// bareDriver hides every optional interface and capability.
type bareDriver struct{ d transport.Driver }

func (b bareDriver) Name() string                         { return "bare" }
func (b bareDriver) Capabilities() transport.Capabilities { return transport.Capabilities{} }
func (b bareDriver) Close() error                         { return b.d.Close() }
func (b bareDriver) Publish(ctx context.Context, m []*transport.Message) error {
	return b.d.Publish(ctx, m)
}
func (b bareDriver) Subscribe(ctx context.Context, s transport.SubscriptionSpec) (transport.Subscription, error) {
	return b.d.Subscribe(ctx, s)
}

// lazyPauser pauses only Receive calls that begin after Pause, as a
// broker whose blocking read does not notice a pause would: the core must
// end the Receive under way itself so that its handler stops at once.
type lazyPauser struct {
	transport.Driver
	paused atomic.Bool
}

func (l *lazyPauser) Pause(context.Context, string) error  { l.paused.Store(true); return nil }
func (l *lazyPauser) Resume(context.Context, string) error { l.paused.Store(false); return nil }

func (l *lazyPauser) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	sub, err := l.Driver.Subscribe(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &lazySub{Subscription: sub, l: l}, nil
}

type lazySub struct {
	transport.Subscription
	l *lazyPauser
}

func (s *lazySub) Receive(ctx context.Context, max int) ([]*transport.Delivery, error) {
	for s.l.paused.Load() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return s.Subscription.Receive(ctx, max)
}

func TestPauseStopsLocalReceiveAtOnce(t *testing.T) {
	ctx := context.Background()
	d := &lazyPauser{Driver: memory.New(transport.Retention{})}
	bus, err := ripple.New(d)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	ran := make(chan string, 10)
	if err := bus.On("mail.send", "mailer", func(_ context.Context, e ripple.Event) error {
		ran <- string(e.Data)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "mail.send", 1); err != nil {
		t.Fatal(err)
	}
	<-ran
	time.Sleep(20 * time.Millisecond) // the runner is waiting in Receive again
	if err := bus.Pause(ctx, "mailer"); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "mail.send", 2); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ran:
		t.Fatalf("event %s ran after Pause returned", got)
	case <-time.After(300 * time.Millisecond):
	}
	if err := bus.Resume(ctx, "mailer"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-time.After(20 * time.Second):
		t.Fatal("the event published during the pause did not run after Resume")
	}
}

// Unsubscribing an ephemeral handler that runs on this bus succeeds,
// although stopping it already deleted its subscription.
func TestUnsubscribeEphemeral(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	if err := bus.On("a.b", "tail.x", func(context.Context, ripple.Event) error { return nil }, ripple.Ephemeral()); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := bus.Unsubscribe(ctx, "tail.x"); err != nil {
		t.Errorf("Unsubscribe of a running ephemeral handler: %v", err)
	}
	if st, err := bus.Stats(ctx); err != nil || len(st) != 0 {
		t.Errorf("after Unsubscribe: %+v, %v; want no handlers", st, err)
	}
}

// A driver's advice (transport.Advisor), such as a broker transport's
// "name a side store", is part of the core's refusal of WithID and
// Idempotent().
func TestRefusalsOnBrokersNameTheSideStore(t *testing.T) {
	bus, err := ripple.New(advisingBare{bareDriver{memory.New(transport.Retention{})}})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	_, pubErr := bus.Publish(context.Background(), "a.b", map[string]int{"n": 1}, ripple.WithID("x"))
	onErr := bus.On("a.b", "h", func(context.Context, ripple.Event) error { return nil }, ripple.Idempotent())
	for what, err := range map[string]error{"WithID": pubErr, "Idempotent": onErr} {
		if !errors.Is(err, ripple.ErrNotSupported) || !strings.Contains(err.Error(), "store=") {
			t.Errorf("%s on a driver advising a store: %v, want ErrNotSupported with the driver's advice naming store=", what, err)
		}
	}
}

// advisingBare is a bare driver that, as a broker transport without a side
// store does, advises naming one.
type advisingBare struct{ bareDriver }

func (advisingBare) Advice(option string) string {
	if option == "WithID" || option == "Idempotent" {
		return "name a store in the URL (store=…)"
	}
	return ""
}
