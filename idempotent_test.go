package ripple_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// TestUsedUpAttemptsHonourDoneClaim: an Idempotent handler's last
// attempt succeeded and recorded its claim as done, but its process died
// before the delivery was settled (or its ack was lost). The redelivery,
// though past its attempts, completes by the claim: the event was
// handled and must not show up as dead.
func TestUsedUpAttemptsHonourDoneClaim(t *testing.T) {
	t.Parallel()
	bus := newMemoryBus(t)
	const lease = 200 * time.Millisecond
	var d transport.Driver
	if !bus.As(&d) {
		t.Fatal("no driver")
	}
	ctx := context.Background()
	crashed, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "a.b", Lease: lease, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer crashed.Close()
	ev, err := bus.Publish(ctx, "a.b", map[string]int{})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := crashed.Receive(ctx, 1)
	if err != nil || len(ds) != 1 || ds[0].Attempt != 1 {
		t.Fatalf("Receive: %v %v", ds, err)
	}
	// The crashed process's attempt: claimed, handled, claim done; never settled.
	cl := d.(transport.Claimer)
	if res, err := cl.Claim(ctx, "h", ev.ID, time.Minute); err != nil || res != transport.Claimed {
		t.Fatalf("Claim = %v, %v", res, err)
	}
	if err := cl.Finish(ctx, "h", ev.ID, true); err != nil {
		t.Fatal(err)
	}

	ran := make(chan struct{}, 1)
	if err := bus.On("a.b", "h", func(context.Context, ripple.Event) error { ran <- struct{}{}; return nil },
		ripple.Idempotent(), ripple.MaxAttempts(1), ripple.Lease(lease)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		st, err := bus.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.Handler != "h" {
				continue
			}
			if s.Dead > 0 {
				dl, _ := bus.DeadLetters(ctx, "h", 10)
				t.Fatalf("the event, which the claim records as handled, was dead-lettered: stats %+v, dead letter error %q", s, dl[0].Error)
			}
			if s.Completed > 0 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the redelivered event was neither completed nor dead-lettered")
}

// TestLateFailureKeepsRetrysClaim: attempt 1 of an Idempotent
// handler ignores its ctx past its claim's TTL, so attempt 2 takes the
// claim and runs. When attempt 1 finally fails, it must leave attempt 2's
// claim alone, or attempt 3 would claim and run while attempt 2 is still
// running.
func TestLateFailureKeepsRetrysClaim(t *testing.T) {
	t.Parallel()
	bus := newMemoryBus(t)
	const timeout = 50 * time.Millisecond
	// claimTTL = 2*(timeout + 2s + timeout/20) ~ 4.1 s.
	var runs atomic.Int32
	var running2 atomic.Bool
	var mu sync.Mutex
	var overlap bool
	third := make(chan struct{}, 1)
	t0 := time.Now()
	err := bus.On("a.b", "h", func(ctx context.Context, e ripple.Event) error {
		switch runs.Add(1) {
		case 1: // ignores ctx until after attempt 2 has taken the claim
			time.Sleep(4600*time.Millisecond - time.Since(t0))
			return errors.New("late failure of attempt 1")
		case 2: // ignores ctx, keeps running after it is abandoned
			running2.Store(true)
			time.Sleep(3400 * time.Millisecond)
			running2.Store(false)
			return errors.New("attempt 2 failed")
		default:
			mu.Lock()
			overlap = overlap || running2.Load()
			mu.Unlock()
			select {
			case third <- struct{}{}:
			default:
			}
			return nil
		}
	}, ripple.Idempotent(), ripple.Timeout(timeout), ripple.Backoff(10*time.Millisecond, 10*time.Millisecond),
		ripple.MaxAttempts(10), ripple.Concurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	if _, err := bus.Publish(context.Background(), "a.b", map[string]int{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-third:
	case <-time.After(15 * time.Second):
		t.Fatal("no third run")
	}
	mu.Lock()
	defer mu.Unlock()
	if overlap {
		t.Fatalf("run 3 started at %s while run 2, which holds the idempotency claim, was still running: attempt 1's late failure dropped run 2's claim",
			time.Since(t0).Round(time.Millisecond))
	}
}
