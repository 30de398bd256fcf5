package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/memory"
)

type signup struct {
	Plan   string `json:"plan"`
	Amount int    `json:"amount"`
}

func planKey(e ripple.Event) (string, error) {
	var s signup
	if err := e.Decode(&s); err != nil {
		return "", err
	}
	return s.Plan, nil
}

func addAmount(acc int, e ripple.Event) (int, error) {
	var s signup
	if err := e.Decode(&s); err != nil {
		return acc, err
	}
	return acc + s.Amount, nil
}

// input makes n distinct signups over span, then a shuffled arrival
// sequence with about a third of them delivered twice or three times.
func input(rng *rand.Rand, n int, base time.Time, span time.Duration) []ripple.Event {
	plans := []string{"free", "pro", "team"}
	var evs []ripple.Event
	for i := range n {
		s := signup{Plan: plans[rng.IntN(len(plans))], Amount: rng.IntN(100)}
		data, _ := json.Marshal(s)
		evs = append(evs, ripple.Event{
			ID: fmt.Sprintf("ev-%d", i), Source: "test", Type: "user.signup.completed",
			Time: base.Add(time.Duration(rng.Int64N(int64(span)))), Data: data,
		})
	}
	arrivals := append([]ripple.Event(nil), evs...)
	for range n / 3 {
		arrivals = append(arrivals, evs[rng.IntN(n)])
	}
	rng.Shuffle(len(arrivals), func(i, j int) { arrivals[i], arrivals[j] = arrivals[j], arrivals[i] })
	return arrivals
}

type expect struct {
	count, sum int
}

// bruteForce recomputes the windows from the definition: an arrival
// counts in a window containing its time unless the window's end is at
// or before the watermark when it arrives (the latest time seen before it
// minus the lateness); each distinct event counts once per window.
func bruteForce(arrivals []ripple.Event, size, hop, lateness time.Duration) (map[string]expect, int64) {
	type wk struct {
		key   string
		start int64
	}
	seen := map[wk]map[string]bool{}
	out := map[wk]expect{}
	var late int64
	var maxT time.Time
	for i, e := range arrivals {
		s := signup{}
		_ = json.Unmarshal(e.Data, &s)
		in := false
		// Every window start k·hop with start <= t < start+size.
		t := e.Time.UnixNano()
		for start := (t/int64(hop) - int64(size/hop) - 1) * int64(hop); start <= t; start += int64(hop) {
			if !(start <= t && t < start+int64(size)) {
				continue
			}
			end := time.Unix(0, start+int64(size))
			if i > 0 && !end.After(maxT.Add(-lateness)) {
				continue
			}
			in = true
			k := wk{s.Plan, start}
			if seen[k] == nil {
				seen[k] = map[string]bool{}
			}
			if seen[k][e.ID] {
				continue
			}
			seen[k][e.ID] = true
			x := out[k]
			x.count++
			x.sum += s.Amount
			out[k] = x
		}
		if !in {
			late++
		}
		if e.Time.After(maxT) {
			maxT = e.Time
		}
	}
	res := map[string]expect{}
	for k, v := range out {
		res[fmt.Sprintf("%s@%d", k.key, k.start)] = v
	}
	return res, late
}

func TestAgainstBruteForce(t *testing.T) {
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name                 string
		size, hop, lateness  time.Duration
		n                    int
		wantLateAtLeastSome  bool
		wantNothingLateAtAll bool
	}{
		{"tumbling/no-lateness", time.Minute, 0, 0, 3000, true, false},
		{"tumbling/lateness", time.Minute, 0, 90 * time.Second, 3000, true, false},
		{"tumbling/all-on-time", time.Minute, 0, time.Hour, 3000, false, true},
		{"hopping/lateness", time.Minute, 20 * time.Second, 45 * time.Second, 3000, true, false},
		{"hopping/all-on-time", time.Minute, 15 * time.Second, time.Hour, 2000, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := range uint64(5) {
				rng := rand.New(rand.NewPCG(seed, 99))
				arrivals := input(rng, tc.n, base, 10*time.Minute)
				agg, err := New(Config[int]{Size: tc.size, Hop: tc.hop, Lateness: tc.lateness, Key: planKey, Add: addAmount})
				if err != nil {
					t.Fatal(err)
				}
				got := map[string]expect{}
				collect := func(rs []Result[int]) {
					for _, r := range rs {
						k := fmt.Sprintf("%s@%d", r.Key, r.Window.Start.UnixNano())
						if _, dup := got[k]; dup {
							t.Errorf("window %s emitted twice", k)
						}
						if r.Window.End.Sub(r.Window.Start) != tc.size {
							t.Errorf("window %s spans %s, want %s", k, r.Window.End.Sub(r.Window.Start), tc.size)
						}
						got[k] = expect{r.Count, r.Value}
					}
				}
				for _, e := range arrivals {
					rs, err := agg.Add(e)
					if err != nil {
						t.Fatal(err)
					}
					collect(rs)
				}
				collect(agg.Flush())
				hop := tc.hop
				if hop == 0 {
					hop = tc.size
				}
				want, late := bruteForce(arrivals, tc.size, hop, tc.lateness)
				if len(got) != len(want) {
					t.Errorf("seed %d: %d windows emitted, brute force has %d", seed, len(got), len(want))
				}
				for k, w := range want {
					if got[k] != w {
						t.Errorf("seed %d: window %s = %+v, brute force %+v", seed, k, got[k], w)
					}
				}
				if agg.Late() != late {
					t.Errorf("seed %d: %d late events, brute force %d", seed, agg.Late(), late)
				}
				if tc.wantLateAtLeastSome && late == 0 {
					t.Errorf("seed %d: the shuffled input produced no late event; the case checks nothing about lateness", seed)
				}
				if tc.wantNothingLateAtAll {
					// With lateness over the whole span, the result is a
					// plain group-by over the distinct events.
					plain := map[string]expect{}
					distinct := map[string]ripple.Event{}
					for _, e := range arrivals {
						distinct[e.ID] = e
					}
					for _, e := range distinct {
						var s signup
						_ = json.Unmarshal(e.Data, &s)
						for _, w := range agg.Windows(e.Time) {
							k := fmt.Sprintf("%s@%d", s.Plan, w.Start.UnixNano())
							x := plain[k]
							x.count++
							x.sum += s.Amount
							plain[k] = x
						}
					}
					if len(plain) != len(got) {
						t.Errorf("seed %d: %d windows, group-by has %d", seed, len(got), len(plain))
					}
					for k, w := range plain {
						if got[k] != w {
							t.Errorf("seed %d: window %s = %+v, group-by %+v", seed, k, got[k], w)
						}
					}
				}
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config[int]{{}, {Size: time.Minute, Hop: 7 * time.Second}, {Size: time.Minute, Hop: 2 * time.Minute}, {Size: time.Minute, Lateness: -1}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
	agg, _ := New(Config[int]{Size: time.Minute})
	if _, err := agg.Add(ripple.Event{ID: "x"}); err == nil {
		t.Error("an event without a time was accepted")
	}
	if ws := agg.Windows(time.Unix(-30, 0)); len(ws) != 1 || !ws[0].Start.Equal(time.Unix(-60, 0)) {
		t.Errorf("windows of a time before the epoch: %v", ws)
	}
}

// TestRunOnBus: signups per plan per window published as events, and a
// re-run over the same events stores each result once.
func TestRunOnBus(t *testing.T) {
	ctx := context.Background()
	bus, err := ripple.Open(ctx, "memory://stream-run")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	cfg := Config[int]{Size: time.Hour, Lateness: time.Hour, Key: planKey, Add: addAmount}
	s, err := Run(bus, "user.signup.completed", "signups.per-plan", "signup.window.counted", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	results := map[string]Result[int]{}
	deliveries := 0
	if err := bus.On("signup.window.counted", "windows.sink", func(_ context.Context, e ripple.Event) error {
		var r Result[int]
		if err := e.Decode(&r); err != nil {
			return ripple.Permanent(err)
		}
		mu.Lock()
		defer mu.Unlock()
		deliveries++
		if e.ID != r.ID("signups.per-plan") {
			t.Errorf("result event id %s, want the deterministic %s", e.ID, r.ID("signups.per-plan"))
		}
		results[r.Key] = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for i := range 30 {
		plan := []string{"free", "pro", "team"}[i%3]
		want[plan] += i
		if _, err := bus.Publish(ctx, "user.signup.completed", signup{Plan: plan, Amount: i}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.Aggregator().Open() < 3 || count(s) < 30 {
		if time.Now().After(deadline) {
			t.Fatalf("the stream did not take the 30 signups: %d windows open", s.Aggregator().Open())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(results)
		mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d window results, want 3", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A re-run over the same input publishes the same ids: stored once.
	mu.Lock()
	var rs []Result[int]
	for _, r := range results {
		rs = append(rs, r)
	}
	mu.Unlock()
	for _, r := range rs {
		ev, err := bus.Publish(ctx, "signup.window.counted", r, ripple.WithID(r.ID("signups.per-plan")), ripple.WithKey(r.Key))
		if err != nil {
			t.Fatal(err)
		}
		if ev.ID != r.ID("signups.per-plan") {
			t.Errorf("republished result has id %s, want %s", ev.ID, r.ID("signups.per-plan"))
		}
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for plan, sum := range want {
		if r := results[plan]; r.Value != sum || r.Count != 10 {
			t.Errorf("plan %s: count %d sum %d, want 10 and %d", plan, r.Count, r.Value, sum)
		}
	}
	if deliveries != 3 {
		t.Errorf("the result handler ran %d times, want 3: one per window, the re-run's results deduplicated", deliveries)
	}
}

// count returns how many events the stream's open windows hold.
func count(s *Stream[int]) int {
	s.agg.mu.Lock()
	defer s.agg.mu.Unlock()
	n := 0
	for _, st := range s.agg.open {
		n += st.count
	}
	return n
}
