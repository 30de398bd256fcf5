// Package ratewindow is the sliding-window rate limit shared by Ripple's
// core (the per-process limit) and the memory transport (the limit shared
// by every bus of a store): at most n starts in any interval of length
// per. A token bucket with burst n would let 2n start within one period
// (n from the full bucket and n more as it refills); a sliding window
// never does.
package ratewindow

import "time"

// Window hands out start times under the limit. It keeps the start times
// that still constrain the next one (those less than per before it), at
// most n, in a ring that grows with use: its memory follows the starts of
// the last period, not n. Reserve is O(1) amortised and allocates only
// when the ring grows. A Window is not safe for concurrent use.
type Window struct {
	n   int
	per time.Duration

	base  time.Time       // origin of the offsets (with its monotonic reading)
	ring  []time.Duration // start offsets from base, in time order, from head
	head  int
	count int
}

// New returns a window allowing n starts in any interval of length per.
// n and per must be positive.
func New(n int, per time.Duration) *Window {
	return &Window{n: n, per: per}
}

// Limit returns the n and per the window was made with.
func (w *Window) Limit() (n int, per time.Duration) { return w.n, w.per }

// Reserve takes the next start and returns how long from now to wait
// before using it. Starts are handed out in time order; a start exactly
// per after the n-th before it is allowed.
func (w *Window) Reserve(now time.Time) time.Duration {
	if w.base.IsZero() {
		w.base = now
	}
	t := now.Sub(w.base)
	if w.count > 0 {
		t = max(t, w.at(w.count-1))
	}
	// Starts a full period before t no longer constrain it.
	for w.count > 0 && w.at(0)+w.per <= t {
		w.pop()
	}
	if w.count >= w.n {
		t = w.at(0) + w.per
		w.pop()
	}
	w.push(t)
	return t - now.Sub(w.base)
}

func (w *Window) at(i int) time.Duration { return w.ring[(w.head+i)%len(w.ring)] }

func (w *Window) pop() {
	w.head = (w.head + 1) % len(w.ring)
	w.count--
}

func (w *Window) push(t time.Duration) {
	if w.count == len(w.ring) {
		ring := make([]time.Duration, min(max(2*len(w.ring), 8), w.n))
		for i := range w.count {
			ring[i] = w.at(i)
		}
		w.ring, w.head = ring, 0
	}
	w.ring[(w.head+w.count)%len(w.ring)] = t
	w.count++
}
