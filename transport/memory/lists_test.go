package memory

import (
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// The completed and dead lists keep their last count entries in order,
// and a list kept at its count reuses its array instead of allocating
// as its start moves on.
func TestKeptListReusesArray(t *testing.T) {
	const count = 100
	var list, buf []*entry
	es := make([]entry, 10*count)
	for i := range es {
		es[i].seq = uint64(i)
		list = appendKept(list, &buf, &es[i])
		list = trim(list, count, time.Hour, 0, false)
		if want := min(i+1, count); len(list) != want {
			t.Fatalf("after %d appends the list holds %d entries, want %d", i+1, len(list), want)
		}
		for j, e := range list {
			if want := uint64(i + 1 - len(list) + j); e.seq != want {
				t.Fatalf("after %d appends entry %d is seq %d, want %d", i+1, j, e.seq, want)
			}
		}
	}
	extra := make([]entry, 10*count)
	// AllocsPerRun counts whole allocations per run: one run of many
	// appends.
	allocs := testing.AllocsPerRun(1, func() {
		for i := range extra {
			list = appendKept(list, &buf, &extra[i])
			list = trim(list, count, time.Hour, 0, false)
		}
	})
	if allocs != 0 {
		t.Errorf("a list at its count allocated %.0f times in %d appends, want 0", allocs, len(extra))
	}
	if cap(buf) > 4*count {
		t.Errorf("the list's array holds %d places for %d entries", cap(buf), count)
	}
}

// The ready queue keeps first-in, first-out order while it grows, drains
// and moves within its array.
func TestReadyQueueOrder(t *testing.T) {
	var q readyQueue
	msg := &transport.Message{}
	es := make([]entry, 5000)
	pushed, popped := 0, 0
	for step := 0; popped < len(es); step++ {
		// Push three, pop two: a backlog that grows, then drains.
		for range 3 {
			if pushed < len(es) {
				es[pushed].seq = uint64(pushed)
				es[pushed].msg = msg
				q.push(&es[pushed])
				pushed++
			}
		}
		for range 2 {
			if q.Len() == 0 {
				break
			}
			if e := q.pop(); e.seq != uint64(popped) {
				t.Fatalf("popped seq %d, want %d", e.seq, popped)
			}
			popped++
		}
	}
	if q.Len() != 0 {
		t.Fatalf("%d entries left", q.Len())
	}
}
