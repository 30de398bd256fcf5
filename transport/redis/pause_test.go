package redis

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestPauseSharedAcrossProcesses checks transport.Pauser: a pause made
// through one driver stops the receivers of another (within the bound the
// package doc gives), Stats says so in both, nothing published meanwhile
// is lost, and Resume delivers it.
func TestPauseSharedAcrossProcesses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := prefixURL(t)
	worker := openURL(t, u, transport.Config{})
	admin := openURL(t, u, transport.Config{})
	s := subscribe(t, worker, "h", "a.*", 5*time.Second)
	sub := s.(*subscription)

	var mu sync.Mutex
	got := map[string]int{}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	// interrupt ends the Receive under way, as the core does after Pause.
	var imu sync.Mutex
	var icancel context.CancelFunc = func() {}
	interrupt := func() { imu.Lock(); icancel(); imu.Unlock() }
	go func() {
		defer close(done)
		for rctx.Err() == nil {
			imu.Lock()
			cctx, cancel := context.WithCancel(rctx)
			icancel = cancel
			imu.Unlock()
			ds, err := s.Receive(cctx, 8)
			cancel()
			if err != nil {
				continue
			}
			mu.Lock()
			for _, d := range ds {
				got[d.ID]++
			}
			mu.Unlock()
			_ = s.Settle(ctx, completeAll(ds))
		}
	}()
	defer func() { stop(); <-done }()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	before := msg("a.b")
	publish(t, admin, before)
	waitFor("the event published before the pause", func() bool { return count() == 1 })

	if err := admin.Pause(ctx, "nope"); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("Pause of an unknown handler = %v, want ErrNotFound", err)
	}
	if err := admin.Pause(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if err := admin.Pause(ctx, "h"); err != nil {
		t.Fatalf("pausing a paused handler: %v", err)
	}
	// The worker's receiver learns of the pause at its next poll.
	waitFor("the receiver to see the pause", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return sub.paused
	})
	// A pause made in the receiver's own process holds from the next
	// Receive, with no poll in between: here the receiver is in a
	// blocking read when the pause comes, which the core interrupts.
	if err := worker.Resume(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	resumed := msg("a.b")
	publish(t, admin, resumed)
	waitFor("an event after Resume", func() bool { return count() == 2 })
	if err := worker.Pause(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	interrupt()
	local := msg("a.b")
	publish(t, admin, local)
	time.Sleep(300 * time.Millisecond)
	if n := count(); n != 2 {
		t.Fatalf("%d events handed out after a pause in the receiver's process, want none", n-2)
	}
	var during []*transport.Message
	for range 10 {
		m := msg("a.b")
		during = append(during, m)
	}
	publish(t, admin, during...)
	time.Sleep(time.Second) // several polls: nothing may come
	if n := count(); n != 2 {
		t.Fatalf("%d events handed out while paused, want none", n-2)
	}
	for _, d := range []*Driver{worker, admin} {
		st := stats(t, d, "h")
		if !st.Paused || st.Waiting != 11 {
			t.Fatalf("stats while paused: %+v, want Paused and 11 waiting", st)
		}
	}

	if err := admin.Resume(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	waitFor("every event published while paused", func() bool { return count() == 13 })
	if st := stats(t, admin, "h"); st.Paused {
		t.Fatalf("stats after Resume: %+v, want not paused", st)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range during {
		if got[m.ID] != 1 {
			t.Fatalf("event %s delivered %d times, want once", m.ID, got[m.ID])
		}
	}
}
