package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// BenchmarkOrderedDrain measures what one delivery of an Ordered()
// subscription costs while one key has a backlog: every event carries the
// same key, so only the oldest unsettled one is deliverable at a time.
// Each receiver leases one message at a time (Concurrency(1)) and settles
// it before asking again. The timed part drains the first `sample` events
// of the backlog (RIPPLE_BENCH_SAMPLE, default 1,000; the whole backlog if
// smaller), so the figure is the per-event cost with that many events
// waiting behind the head. It is reported as ns/event.
func BenchmarkOrderedDrain(b *testing.B) {
	sample := 1000
	if s := os.Getenv("RIPPLE_BENCH_SAMPLE"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("RIPPLE_BENCH_SAMPLE=%q: want a positive count", s)
		}
		sample = n
	}
	backlogs := []int{1000, 4000, 16000}
	if os.Getenv("RIPPLE_BENCH_BIG") != "" {
		backlogs = append(backlogs, 100000)
	}
	for _, receivers := range []int{1, 50} {
		for _, backlog := range backlogs {
			b.Run(fmt.Sprintf("receivers=%d/backlog=%d", receivers, backlog), func(b *testing.B) {
				drain := min(sample, backlog)
				var total time.Duration
				for range b.N {
					total += orderedDrainOnce(b, backlog, drain, receivers)
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(drain*b.N), "ns/event")
			})
		}
	}
}

// orderedDrainOnce publishes backlog events of one key for an ordered
// subscription, then times receivers draining the first drain of them,
// checking that they come in publish order.
func orderedDrainOnce(b *testing.B, backlog, drain, receivers int) time.Duration {
	b.StopTimer()
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "ordered.db")
	drv, err := Open(ctx, "sqlite://"+path, transport.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	spec := transport.SubscriptionSpec{Name: "h", Pattern: "bench.>", Ordered: true, Lease: time.Minute}
	subs := make([]transport.Subscription, receivers)
	for i := range subs {
		if subs[i], err = drv.Subscribe(ctx, spec); err != nil {
			b.Fatal(err)
		}
		defer subs[i].Close()
	}
	data := make([]byte, 100)
	batch := make([]*transport.Message, 0, 500)
	for i := 0; i < backlog; i++ {
		batch = append(batch, &transport.Message{ID: fmt.Sprintf("o-%d", i), Type: "bench.ordered", Key: "k",
			Time: time.Now(), Attrs: map[string]string{"source": "bench"}, Data: data})
		if len(batch) == cap(batch) || i == backlog-1 {
			if err := drv.Publish(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var mu sync.Mutex
	next := 0 // the index expected next, checked under mu
	var wg sync.WaitGroup
	b.StartTimer()
	start := time.Now()
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for runCtx.Err() == nil {
				ds, err := s.Receive(runCtx, 1)
				if err != nil {
					if runCtx.Err() == nil {
						b.Error(err)
						cancel()
					}
					return
				}
				for _, d := range ds {
					mu.Lock()
					if want := fmt.Sprintf("o-%d", next); d.ID != want {
						b.Errorf("received %s, want %s", d.ID, want)
					}
					next++
					mu.Unlock()
					if err := s.Settle(ctx, []transport.Settlement{{Delivery: d, Outcome: transport.Complete}}); err != nil {
						b.Error(err)
						cancel()
						return
					}
					if done.Add(1) >= int64(drain) {
						cancel()
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	return elapsed
}
