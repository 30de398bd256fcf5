package ratewindow

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Every start is as early as the limit allows, and no n+1 starts fall
// within one period, whatever the arrivals and however the ring grows.
func TestWindowIsExactSlidingWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Now()
	for round := range 200 {
		n := 1 + rng.IntN(20)
		per := time.Duration(1+rng.IntN(1000)) * time.Millisecond
		w := New(n, per)
		now := t0
		var starts []time.Time
		for i := range 300 {
			now = now.Add(time.Duration(rng.IntN(3*int(per)/n+1)) * time.Nanosecond * time.Duration(rng.IntN(2)))
			if rng.IntN(50) == 0 {
				now = now.Add(3 * per) // an idle spell
			}
			st := now.Add(w.Reserve(now))
			want := now
			if i > 0 && starts[i-1].After(want) {
				want = starts[i-1]
			}
			if i >= n && starts[i-n].Add(per).After(want) {
				want = starts[i-n].Add(per)
			}
			if !st.Equal(want) {
				t.Fatalf("round %d (n %d, per %s): start %d at %s, want %s", round, n, per, i, st.Sub(t0), want.Sub(t0))
			}
			starts = append(starts, st)
		}
		if len(w.ring) > n {
			t.Fatalf("ring of %d for n %d", len(w.ring), n)
		}
	}
}

// The ring holds only the starts of the last period, not n slots.
func TestWindowMemoryFollowsUse(t *testing.T) {
	w := New(1<<30, time.Second)
	now := time.Now()
	for range 10000 {
		w.Reserve(now)
		now = now.Add(time.Millisecond)
	}
	if len(w.ring) > 2048 {
		t.Errorf("ring of %d entries for about 1000 starts a period", len(w.ring))
	}
}

func BenchmarkReserve(b *testing.B) {
	w := New(100, time.Second)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(10 * time.Millisecond)
		w.Reserve(now)
	}
}
