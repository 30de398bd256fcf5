package ripple

import (
	"sync"
	"time"
)

// slidingWindow is a handler's local rate limit: at most n starts in any
// interval of length per. It keeps the start times of the last n
// reservations; the next one may start once the oldest of them is per in
// the past. (A token bucket with burst n lets 2n start within one
// period: n from the full bucket and n more as it refills.)
type slidingWindow struct {
	per time.Duration

	mu     sync.Mutex
	starts []time.Time // ring of the last n start times, oldest at next
	next   int
	filled int
}

func newSlidingWindow(n int, per time.Duration) *slidingWindow {
	return &slidingWindow{per: per, starts: make([]time.Time, n)}
}

// reserve takes the next start slot and returns how long to wait, from
// now, before using it. The slot's start time is now plus the wait.
func (w *slidingWindow) reserve(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	at := now
	if w.filled == len(w.starts) {
		if free := w.starts[w.next].Add(w.per); free.After(at) {
			at = free
		}
	} else {
		w.filled++
	}
	// Slots are handed out in time order, so the ring stays sorted.
	if prev := w.starts[(w.next+len(w.starts)-1)%len(w.starts)]; prev.After(at) {
		at = prev
	}
	w.starts[w.next] = at
	w.next = (w.next + 1) % len(w.starts)
	return at.Sub(now)
}
