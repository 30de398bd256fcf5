package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// TestReadAheadDoesNotLapse runs two processes of one handler. The first
// reads events ahead while it is busy, then its handlers run slow events,
// so no Receive comes for a while; the second process starts meanwhile.
// The events read ahead must be handed back before their leases run out,
// not reclaimed by the second process as if a handler had run and lost
// them: every event runs once, at attempt 1, and none is dead-lettered
// (with MaxAttempts(1) such an event would go to the dead-letter queue
// without ever running).
func TestReadAheadDoesNotLapse(t *testing.T) {
	for _, maxAttempts := range []int{1, 5} {
		t.Run(fmt.Sprintf("MaxAttempts-%d", maxAttempts), func(t *testing.T) {
			t.Parallel()
			readAheadLapse(t, maxAttempts)
		})
	}
}

func readAheadLapse(t *testing.T, maxAttempts int) {
	u := prefixURL(t)
	ctx := context.Background()
	open := func() *ripple.Bus {
		b, err := ripple.Open(ctx, u, ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_ = b.Shutdown(c)
		})
		return b
	}
	var handled atomic.Int32
	var mu sync.Mutex
	var late []string
	slowStarted := make(chan struct{}, 2)
	handler := func(ctx context.Context, e ripple.Event) error {
		var v struct{ Slow bool }
		_ = json.Unmarshal(e.Data, &v)
		if v.Slow {
			slowStarted <- struct{}{}
			time.Sleep(2 * time.Second)
		}
		if e.Attempt != 1 {
			mu.Lock()
			late = append(late, fmt.Sprintf("%s at attempt %d", e.ID, e.Attempt))
			mu.Unlock()
		}
		handled.Add(1)
		return nil
	}
	opts := []ripple.HandlerOption{ripple.Concurrency(2), ripple.MaxAttempts(maxAttempts),
		ripple.Lease(300 * time.Millisecond), ripple.Timeout(10 * time.Second)}

	// The subscription exists before the events are published.
	setup := open()
	if err := setup.On("a.b", "h", handler, opts...); err != nil {
		t.Fatal(err)
	}
	if err := setup.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := setup.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	p1, p2 := open(), open()
	for _, b := range []*ripple.Bus{p1, p2} {
		if err := b.On("a.b", "h", handler, opts...); err != nil {
			t.Fatal(err)
		}
	}
	total := 0
	pub := func(n int, slow bool) {
		for range n {
			if _, err := p1.Publish(ctx, "a.b", map[string]bool{"Slow": slow}); err != nil {
				t.Fatal(err)
			}
			total++
		}
	}
	pub(40, false) // fast events: p1 is busy and reads ahead
	pub(2, true)   // slow events fill p1's two slots for 2 s
	pub(60, false)
	if err := p1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-slowStarted:
		case <-time.After(10 * time.Second):
			t.Fatal("slow events did not start")
		}
	}
	if err := p2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for int(handled.Load()) < total && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	dead, err := p2.DeadLetters(ctx, "h", 100)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if int(handled.Load()) < total || len(dead) > 0 || len(late) > 0 {
		t.Fatalf("handled %d of %d events, %d dead-lettered, run past attempt 1: %v", handled.Load(), total, len(dead), late)
	}
}
