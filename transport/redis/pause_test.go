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
	go func() {
		defer close(done)
		for rctx.Err() == nil {
			ds, err := s.Receive(rctx, 8)
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
	var during []*transport.Message
	for range 10 {
		m := msg("a.b")
		during = append(during, m)
	}
	publish(t, admin, during...)
	time.Sleep(time.Second) // several polls: nothing may come
	if n := count(); n != 1 {
		t.Fatalf("%d events handed out while paused, want none", n-1)
	}
	for _, d := range []*Driver{worker, admin} {
		st := stats(t, d, "h")
		if !st.Paused || st.Waiting != 10 {
			t.Fatalf("stats while paused: %+v, want Paused and 10 waiting", st)
		}
	}

	if err := admin.Resume(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	waitFor("every event published while paused", func() bool { return count() == 11 })
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
