package ripple

import (
	"sync"
	"time"

	"github.com/ripplehq/ripple/internal/ratewindow"
)

// slidingWindow is a handler's local rate limit: at most n starts in any
// interval of length per (see package ratewindow).
type slidingWindow struct {
	mu sync.Mutex
	w  *ratewindow.Window
}

func newSlidingWindow(n int, per time.Duration) *slidingWindow {
	return &slidingWindow{w: ratewindow.New(n, per)}
}

// reserve takes the next start slot and returns how long to wait, from
// now, before using it.
func (w *slidingWindow) reserve(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Reserve(now)
}
