package ripple_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

type middlewareTenantKey struct{}

// trace records the order middleware and the handler run in.
type trace struct {
	mu    sync.Mutex
	steps []string
}

func (tr *trace) add(s string) {
	tr.mu.Lock()
	tr.steps = append(tr.steps, s)
	tr.mu.Unlock()
}

func (tr *trace) get() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.steps)
}

func (tr *trace) mw(name string) ripple.Middleware {
	return func(next ripple.HandlerFunc) ripple.HandlerFunc {
		return func(ctx context.Context, e ripple.Event) error {
			tr.add(name + ">")
			err := next(ctx, e)
			tr.add("<" + name)
			return err
		}
	}
}

// Bus middleware runs outermost in the order given, across calls to Use
// and for handlers registered before Use too; then the handler's own.
func TestMiddlewareOrder(t *testing.T) {
	ctx := context.Background()
	bus := newMemoryBus(t)
	var tr trace
	done := make(chan struct{}, 2)
	handler := func(name string) ripple.HandlerFunc {
		return func(ctx context.Context, e ripple.Event) error {
			tr.add(name)
			done <- struct{}{}
			return nil
		}
	}
	if err := bus.On("a.b", "first", handler("first"), ripple.WithMiddleware(tr.mw("c"), tr.mw("d"))); err != nil {
		t.Fatal(err)
	}
	if err := bus.Use(tr.mw("a")); err != nil {
		t.Fatal(err)
	}
	if err := bus.Use(tr.mw("b")); err != nil {
		t.Fatal(err)
	}
	if err := bus.On("x.y", "second", handler("second")); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"a.b", "x.y"} {
		if _, err := bus.Publish(ctx, typ, 1); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s was not handled", typ)
		}
		waitUntil(t, "the middleware to return", func() bool { s := tr.get(); return s[len(s)-1] == "<a" })
		got := strings.Join(tr.get(), " ")
		want := map[string]string{
			"a.b": "a> b> c> d> first <d <c <b <a",
			"x.y": "a> b> c> d> first <d <c <b <a a> b> second <b <a",
		}[typ]
		if got != want {
			t.Errorf("after %s: ran %q, want %q", typ, got, want)
		}
	}

	if err := bus.Use(tr.mw("late")); err == nil || !strings.Contains(err.Error(), "before Start") {
		t.Errorf("Use after Start: %v, want an error saying to call it before Start", err)
	}
	if err := newMemoryBus(t).Use(nil); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("Use(nil): %v", err)
	}
	if err := bus.On("a.b", "third", handler("third"), ripple.WithMiddleware(nil)); !errors.Is(err, ripple.ErrInvalidOption) {
		t.Errorf("WithMiddleware(nil): %v", err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Middleware runs with the attempt's ctx and event; what it puts in ctx
// reaches the handler; its result is the attempt's; a panic in it is
// handled like a handler's.
func TestMiddlewareContextResultAndPanic(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://", ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })

	type seen struct {
		attempt     int
		hasDeadline bool
		inCtx       bool
	}
	results := make(chan seen, 10)
	if err := bus.Use(func(next ripple.HandlerFunc) ripple.HandlerFunc {
		return func(ctx context.Context, e ripple.Event) error {
			cur, ok := ripple.EventFromContext(ctx)
			_, hasDeadline := ctx.Deadline()
			if e.Attempt == 1 {
				panic("middleware bug on the first attempt")
			}
			results <- seen{attempt: e.Attempt, hasDeadline: hasDeadline, inCtx: ok && cur.ID == e.ID}
			err := next(context.WithValue(ctx, middlewareTenantKey{}, e.Headers["tenant"]), e)
			if err != nil && strings.Contains(err.Error(), "bad data") {
				return ripple.Permanent(err)
			}
			return err
		}
	}); err != nil {
		t.Fatal(err)
	}
	tenants := make(chan any, 10)
	if err := bus.On("order.>", "orders", func(ctx context.Context, e ripple.Event) error {
		tenants <- ctx.Value(middlewareTenantKey{})
		if e.Type == "order.bad" {
			return errors.New("bad data")
		}
		return nil
	}, ripple.Backoff(time.Millisecond, time.Millisecond), ripple.MaxAttempts(5)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, "order.placed", 1, ripple.WithHeader("tenant", "acme")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-results:
		if s.attempt != 2 || !s.hasDeadline || !s.inCtx {
			t.Errorf("middleware saw %+v: want attempt 2 (the panic failed attempt 1), the attempt's deadline and event", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the event was not retried after the middleware panicked")
	}
	if got := <-tenants; got != "acme" {
		t.Errorf("handler's ctx tenant %v, want the value the middleware set", got)
	}

	if _, err := bus.Publish(ctx, "order.bad", 1); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the bad order to be dead-lettered", func() bool {
		d, err := bus.DeadLetters(ctx, "orders", 10)
		return err == nil && len(d) == 1
	})
	d, _ := bus.DeadLetters(ctx, "orders", 10)
	if d[0].Attempts != 2 || !strings.Contains(d[0].Error, "bad data") {
		t.Errorf("dead letter %+v: want it dead after attempt 2, the middleware having made the error permanent", d[0])
	}
}

// Use wraps every handler of the bus; here, to log each attempt.
func ExampleBus_Use() {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	defer bus.Close()

	logAttempts := func(next ripple.HandlerFunc) ripple.HandlerFunc {
		return func(ctx context.Context, e ripple.Event) error {
			fmt.Printf("%s: start %s attempt %d\n", e.Handler, e.Type, e.Attempt)
			err := next(ctx, e)
			fmt.Printf("%s: done, err=%v\n", e.Handler, err)
			return err
		}
	}
	if err := bus.Use(logAttempts); err != nil {
		panic(err)
	}
	err = bus.On("user.signup.completed", "email.welcome", func(ctx context.Context, e ripple.Event) error {
		fmt.Println("email.welcome: sending the welcome email")
		return nil
	})
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	if _, err := bus.Publish(ctx, "user.signup.completed", UserSignup{UserID: "u1", Email: "ada@example.com"}); err != nil {
		panic(err)
	}
	if err := bus.WaitIdle(ctx); err != nil {
		panic(err)
	}
	// Output:
	// email.welcome: start user.signup.completed attempt 1
	// email.welcome: sending the welcome email
	// email.welcome: done, err=<nil>
}
