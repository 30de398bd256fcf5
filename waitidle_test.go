package ripple_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// slowHook counts finished attempts after a pause, so a WaitIdle that
// returned before the hooks ran would see the count short.
type slowHook struct{ n atomic.Int64 }

func (h *slowHook) OnHandle(ripple.HandleResult) {
	time.Sleep(5 * time.Millisecond)
	h.n.Add(1)
}

// WaitIdle returns once every handler has handled everything: slow
// handlers, retries in backoff, events published by handlers, and the
// hooks of the last attempts.
func TestWaitIdle(t *testing.T) {
	ctx := context.Background()
	hook := &slowHook{}
	bus, err := ripple.Open(ctx, "memory://", ripple.WithHooks(hook),
		ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })

	var slow, flaky, children atomic.Int64
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(bus.On("job.run", "job.slow", func(context.Context, ripple.Event) error {
		time.Sleep(10 * time.Millisecond)
		slow.Add(1)
		return nil
	}, ripple.Concurrency(2)))
	must(bus.On("job.run", "job.flaky", func(ctx context.Context, e ripple.Event) error {
		if e.Attempt == 1 {
			return errors.New("first attempt fails")
		}
		flaky.Add(1)
		_, err := bus.Publish(ctx, "job.followup", 1)
		return err
	}, ripple.Backoff(50*time.Millisecond, 50*time.Millisecond)))
	must(bus.On("job.followup", "job.child", func(context.Context, ripple.Event) error {
		time.Sleep(5 * time.Millisecond)
		children.Add(1)
		return nil
	}))

	if err := bus.WaitIdle(ctx); err == nil {
		t.Error("WaitIdle before Start returned nil")
	}
	must(bus.Start(ctx))
	must(bus.WaitIdle(ctx)) // nothing published yet

	const n = 10
	for range n {
		if _, err := bus.Publish(ctx, "job.run", 1); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := bus.WaitIdle(wctx); err != nil {
		t.Fatal(err)
	}
	// Each event: slow 1, flaky 2 attempts, child 1.
	if slow.Load() != n || flaky.Load() != n || children.Load() != n || hook.n.Load() != 4*n {
		t.Errorf("WaitIdle returned with slow %d, flaky %d, children %d, hooks %d; want %d, %d, %d, %d",
			slow.Load(), flaky.Load(), children.Load(), hook.n.Load(), n, n, n, 4*n)
	}

	// A delayed event keeps it waiting until ctx ends.
	if _, err := bus.Publish(ctx, "job.followup", 1, ripple.WithDelay(time.Hour)); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer scancel()
	if err := bus.WaitIdle(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitIdle with an event delayed an hour: %v, want DeadlineExceeded", err)
	}

	must(bus.Close())
	if err := bus.WaitIdle(ctx); !errors.Is(err, ripple.ErrClosed) {
		t.Errorf("WaitIdle after Close: %v, want ErrClosed", err)
	}
}

// WaitIdle lets a script or test publish and then wait for the handlers.
func ExampleBus_WaitIdle() {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	defer bus.Close()
	var sent atomic.Int64
	if err := bus.On("user.signup.completed", "email.welcome", func(ctx context.Context, e ripple.Event) error {
		sent.Add(1)
		return nil
	}); err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	for range 3 {
		if _, err := bus.Publish(ctx, "user.signup.completed", UserSignup{UserID: "u1", Email: "ada@example.com"}); err != nil {
			panic(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := bus.WaitIdle(wctx); err != nil {
		panic(err)
	}
	fmt.Println("welcome emails sent:", sent.Load())
	// Output: welcome emails sent: 3
}
