package ripple

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// The local limiter is a sliding window: n may start at once, and the
// n+1th only per after the first, however the reservations are spaced.
func TestSlidingWindowBound(t *testing.T) {
	const n, per = 3, time.Second
	w := newSlidingWindow(n, per)
	t0 := time.Unix(1000, 0)
	var starts []time.Time
	reserve := func(now time.Time) {
		starts = append(starts, now.Add(w.reserve(now)))
	}
	for range 3 {
		reserve(t0)
	}
	for i := range 7 {
		reserve(t0.Add(time.Duration(i) * 100 * time.Millisecond))
	}
	reserve(t0.Add(10 * time.Second)) // after an idle spell: at once
	want := []time.Duration{0, 0, 0, 1000, 1000, 1000, 2000, 2000, 2000, 3000, 10000}
	for i, st := range starts {
		if got := st.Sub(t0); got != want[i]*time.Millisecond {
			t.Errorf("start %d at +%s, want +%dms", i, got, want[i])
		}
	}
	for i := 0; i+n < len(starts); i++ {
		if starts[i+n].Sub(starts[i]) < per {
			t.Errorf("starts %d and %d are %s apart: %d starts in one window", i, i+n, starts[i+n].Sub(starts[i]), n+1)
		}
	}
}

// A rate-limited handler waits for its slot before every event; when the
// slot is free at once, that wait must cost nothing (no timer).
func TestRateLimitFreeSlotAllocatesNothing(t *testing.T) {
	r := &runner{recvCtx: context.Background(), limiter: newSlidingWindow(1<<16, time.Hour)}
	allocs := testing.AllocsPerRun(1000, func() {
		if err := r.waitRate(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("waitRate with a free slot: %.1f allocations per event, want 0", allocs)
	}
}

// A limit's memory follows the starts it must remember, not n: a large n
// (a limit meant never to bind, or a count per day) costs nothing up front.
func TestSlidingWindowMemoryFollowsUse(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	w := newSlidingWindow(1<<20, time.Hour)
	now := time.Now()
	for range 100 {
		w.reserve(now)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Errorf("RateLimit(1<<20, time.Hour) allocated %d bytes for 100 starts, want it to grow with use", grew)
	}
}
