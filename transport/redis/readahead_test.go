package redis

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// busyReceive makes s busy in the read-ahead sense: a Receive that got
// all it asked for, just now.
func busyReceive(t *testing.T, s transport.Subscription, n int) []*transport.Delivery {
	t.Helper()
	ds := receive(t, s, n, 2*time.Second)
	if sub := s.(*subscription); time.Since(sub.fullAt) > busyWithin {
		t.Fatalf("receiving %d of the waiting events did not mark the receiver busy", n)
	}
	return ds
}

// TestReadAheadReleasedOnClose checks that events a busy receiver read
// ahead go back at Close, at once and without using an attempt, instead
// of waiting out their lease.
func TestReadAheadReleasedOnClose(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d1 := openURL(t, u, transport.Config{})
	d2 := openURL(t, u, transport.Config{})
	s1 := subscribe(t, d1, "h", "x.y", time.Minute)
	s2 := subscribe(t, d2, "h", "x.y", time.Minute)
	for range 40 {
		publish(t, d1, genMsg("x.y"))
	}
	first := busyReceive(t, s1, 2)
	// Busy: this read takes minRead entries for a Receive of one.
	one := receive(t, s1, 1, 2*time.Second)
	if n := len(s1.(*subscription).buf); n != minRead-1 {
		t.Fatalf("a busy receiver kept %d entries read ahead, want %d", n, minRead-1)
	}
	if st := stats(t, d1, "h"); st.Active != int64(len(first)+minRead) {
		t.Fatalf("stats %+v; want the %d received and read-ahead events active", st, len(first)+minRead)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	// The 3 handed out stay leased; the rest are for s2 now, not after
	// the one-minute lease.
	got := receive(t, s2, 40-len(first)-len(one), 2*time.Second)
	for _, d := range got {
		if d.Attempt != 1 {
			t.Fatalf("an event read ahead and handed back came again as attempt %d, want 1", d.Attempt)
		}
	}
}

// TestReadAheadStaleReleased checks that entries read ahead longer than a
// quarter of their lease are handed back rather than handed out, so the
// core never starts a handler on a lease about to run out.
func TestReadAheadStaleReleased(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	const lease = 2 * time.Second // long enough that a loaded machine never lets it run out here
	s := subscribe(t, d, "h", "x.y", lease)
	for range 20 {
		publish(t, d, genMsg("x.y"))
	}
	busyReceive(t, s, 2)
	receive(t, s, 1, 2*time.Second)
	sub := s.(*subscription)
	sub.mu.Lock()
	ahead := len(sub.buf)
	sub.mu.Unlock()
	if ahead == 0 {
		t.Fatal("nothing was read ahead")
	}
	time.Sleep(lease/4 + 50*time.Millisecond)
	got := receive(t, s, 1, 2*time.Second)
	if got[0].Attempt != 1 {
		t.Fatalf("attempt %d, want 1", got[0].Attempt)
	}
	sub.mu.Lock()
	left := len(sub.buf)
	sub.mu.Unlock()
	// Handed out: 2, 1 and 1. The stale read-ahead entries went back to
	// the stream, so they wait again instead of being active.
	if st := stats(t, d, "h"); left != 0 || st.Active != 4 || st.Waiting != 16 {
		t.Fatalf("after the read-ahead went stale: %d still buffered, stats %+v; want none buffered, 4 active, 16 waiting", left, st)
	}
}

// TestNoReadAheadWhenIdle checks that a receiver that is not busy reads
// only what it is asked for, leaving the rest to other receivers.
func TestNoReadAheadWhenIdle(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "x.y", time.Minute)
	for range 20 {
		publish(t, d, genMsg("x.y"))
	}
	receive(t, s, 1, 2*time.Second)
	time.Sleep(2 * busyWithin)
	receive(t, s, 1, 2*time.Second)
	if n := len(s.(*subscription).buf); n != 0 {
		t.Fatalf("an idle receiver read %d entries ahead", n)
	}
	if st := stats(t, d, "h"); st.Active != 2 || st.Waiting != 18 {
		t.Fatalf("stats %+v; want 2 active and 18 waiting", st)
	}
}

// TestCancelledReceiveKeepsConnection checks that cancelling a Receive
// blocked in XREADGROUP ends it at once through CLIENT UNBLOCK, leaving
// its connection for the next read rather than closing it.
func TestCancelledReceiveKeepsConnection(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "x.y", time.Minute)
	receiveNone(t, s, 300*time.Millisecond) // past the first poll, into a blocking read
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Receive(ctx, 1)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("cancelled Receive returned %v, want context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatal("a cancelled Receive did not return")
	}
	if el := time.Since(start); el > 100*time.Millisecond {
		t.Errorf("a cancelled Receive took %s to return", el)
	}
	if n := len(s.(*subscription).blk); n != 1 {
		t.Fatalf("%d idle blocking connections after the cancelled read, want its connection back (1)", n)
	}
	publish(t, d, genMsg("x.y"))
	receive(t, s, 1, 2*time.Second)
}

// TestReceiveCancelledAtAnyMoment cancels Receive calls at every point of
// their read, including just as the read returns: each must end with the
// context's error, and the subscription must stay usable.
func TestReceiveCancelledAtAnyMoment(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "x.y", time.Minute)
	failed := 0
	for i := range 2000 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(500+i%7*150)*time.Microsecond)
		_, err := s.Receive(ctx, 1)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			if failed++; failed <= 3 {
				t.Logf("Receive %d: %v", i, err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of 2000 cancelled Receive calls failed with an error other than the context's", failed)
	}
	publish(t, d, msg("x.y"))
	receive(t, s, 1, 2*time.Second)
}

// TestConcurrentReceiversKeepReadAhead runs eight busy receivers on one
// subscription: what one reads ahead must not be dropped by another, or
// it would wait out its lease.
func TestConcurrentReceiversKeepReadAhead(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "x.y", time.Minute)
	const n = 400
	ms := make([]*transport.Message, n)
	for i := range ms {
		ms[i] = genMsg("x.y")
	}
	publish(t, d, ms...)
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				ds, err := s.Receive(ctx, 2)
				cancel()
				if err != nil {
					return
				}
				mu.Lock()
				for _, x := range ds {
					seen[x.ID] = true
				}
				mu.Unlock()
				settle(t, s, transport.Complete, 0, ds...)
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("eight receivers got %d of %d events; the rest stayed leased", len(seen), n)
	}
}
