package transporttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// seqOf reads the "seq" field that the ordering cases publish.
func seqOf(e ripple.Event) int {
	var v struct {
		Seq int `json:"seq"`
	}
	_ = json.Unmarshal(e.Data, &v)
	return v.Seq
}

// testOrdered: with Ordered(), events with the same key are handled one at
// a time in publish order, while different keys run in parallel.
func testOrdered(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.ordered.applied", "ordered.handler"
	if !s.caps.Ordered {
		err := bus.On(typ, name, func(context.Context, ripple.Event) error { return nil }, ripple.Ordered())
		s.wantNotSupported(t, "On with Ordered()", err)
		return
	}
	keys := []string{"k0", "k1", "k2", "k3"}
	const perKey = 10
	var (
		mu         sync.Mutex
		active     = map[string]bool{}
		seen       = map[string][]int{}
		violations []string
		heads      int
		allHeads   = make(chan struct{})
	)
	var rec recorder
	on(t, bus, typ, name, rec.handler("", func(ctx context.Context, e ripple.Event) error {
		if e.Key == "" {
			return nil
		}
		seq := seqOf(e)
		mu.Lock()
		if active[e.Key] {
			violations = append(violations, fmt.Sprintf("key %s seq %d started while another event of its key ran", e.Key, seq))
		}
		active[e.Key] = true
		seen[e.Key] = append(seen[e.Key], seq)
		if seq == 0 {
			if heads++; heads == len(keys) {
				close(allHeads)
			}
		}
		mu.Unlock()
		if seq == 0 {
			// Each key's first event waits until every key's first event
			// runs: an implementation that serialises all keys never gets
			// there.
			select {
			case <-allHeads:
			case <-time.After(waitBound):
				mu.Lock()
				violations = append(violations, "the first events of different keys never ran at the same time")
				mu.Unlock()
			case <-ctx.Done():
			}
		} else {
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		active[e.Key] = false
		mu.Unlock()
		return nil
	}), ripple.Ordered(), ripple.Concurrency(8))
	start(t, bus)
	var ids []string
	for i := range perKey {
		for _, k := range keys {
			ids = append(ids, publish(t, bus, typ, map[string]int{"seq": i}, ripple.WithKey(k)).ID)
		}
		ids = append(ids, publish(t, bus, typ, map[string]int{"seq": i}).ID)
	}
	rec.waitSucceeded(t, "every ordered event to be handled", ids...)
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
	want := make([]int, perKey)
	for i := range want {
		want[i] = i
	}
	for _, k := range keys {
		if !slices.Equal(seen[k], want) {
			t.Errorf("key %s handled in order %v, want %v", k, seen[k], want)
		}
	}
}

// testOrderedFailingHead: a failing event holds back only its own key; its
// successors run after it succeeds (or is dead-lettered), in order.
func testOrderedFailingHead(t *testing.T, s *suite) {
	bus := s.open(t, s.h.NewURL(t))
	const typ, name = "conformance.ordered.retried", "ordered.retry"
	if !s.caps.Ordered {
		err := bus.On(typ, name, func(context.Context, ripple.Event) error { return nil }, ripple.Ordered())
		s.wantNotSupported(t, "On with Ordered()", err)
		return
	}
	var rec recorder
	bDone := make(chan struct{})
	on(t, bus, typ, name, rec.handler("", func(ctx context.Context, e ripple.Event) error {
		switch {
		case e.Key == "a" && seqOf(e) == 0:
			// Fails until key b is through: if a's retries held back b,
			// it would fail until its attempts ran out.
			select {
			case <-bDone:
				return nil
			default:
				return errors.New("deliberate failure until key b is done")
			}
		case e.Key == "c" && seqOf(e) == 0:
			return ripple.Permanent(errors.New("deliberately dead"))
		}
		return nil
	}), ripple.Ordered(), ripple.Concurrency(4), ripple.MaxAttempts(400), ripple.Backoff(50*time.Millisecond, 50*time.Millisecond))
	start(t, bus)
	pub := map[string][]ripple.Event{}
	for _, k := range []string{"a", "c", "b"} {
		for i := range 3 {
			pub[k] = append(pub[k], publish(t, bus, typ, map[string]int{"seq": i}, ripple.WithKey(k)))
		}
	}
	for i := range 2 {
		pub["b"] = append(pub["b"], publish(t, bus, typ, map[string]int{"seq": 3 + i}, ripple.WithKey("b")))
	}
	var bIDs []string
	for _, e := range pub["b"] {
		bIDs = append(bIDs, e.ID)
	}
	rec.waitSucceeded(t, "key b to be handled while key a's first event is failing", bIDs...)
	close(bDone)
	rec.waitSucceeded(t, "key a's events to be handled once its first event succeeds",
		pub["a"][0].ID, pub["a"][1].ID, pub["a"][2].ID, pub["c"][1].ID, pub["c"][2].ID)

	for _, k := range []string{"a", "b", "c"} {
		var prevEnd time.Time
		for i, e := range pub[k] {
			calls := rec.of(e.ID)
			if len(calls) == 0 {
				t.Fatalf("key %s seq %d was never handled", k, i)
			}
			if calls[0].start.Before(prevEnd) {
				t.Errorf("key %s seq %d started at %s, before seq %d was settled at %s",
					k, i, calls[0].start.Format("15:04:05.000"), i-1, prevEnd.Format("15:04:05.000"))
			}
			prevEnd = calls[len(calls)-1].end
		}
	}
	if calls := rec.of(pub["a"][0].ID); calls[len(calls)-1].err != nil {
		t.Errorf("key a's first event ended with %v, want success", calls[len(calls)-1].err)
	}
}
