package stream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/stream"
)

// benchEvents is how many events one benchmark iteration folds:
// 1,000,000, or $RIPPLE_BENCH_EVENTS.
func benchEvents(b *testing.B) int {
	if v := os.Getenv("RIPPLE_BENCH_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("RIPPLE_BENCH_EVENTS=%q: want a positive count", v)
		}
		return n
	}
	return 1_000_000
}

// benchInput is n events, 1,000 per second of event time over 100 keys,
// in time order with a little jitter, each with a small JSON payload.
func benchInput(n int) []ripple.Event {
	out := make([]ripple.Event, n)
	for i := range out {
		data, _ := json.Marshal(payload{Plan: "plan-" + strconv.Itoa(i%100), Amount: int64(i % 97)})
		out[i] = ripple.Event{
			ID:     "e" + strconv.Itoa(i),
			Source: "bench",
			Type:   "order.placed",
			Time:   epoch.Add(time.Duration(i)*time.Millisecond - time.Duration(i%7)*time.Millisecond),
			Data:   data,
		}
	}
	return out
}

// report records events/s of wall time and events per CPU-second, the
// figure a machine shared with other work changes least.
func report(b *testing.B, n int, start time.Time, cpu0 time.Duration) {
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(n)/cpu.Seconds(), "events/cpu-s")
	}
}

// BenchmarkWindow measures the window computation over 1,000,000 events:
// direct/* feeds Stream.Handle without a transport (the aggregation path
// itself: keying, deduplication, folding, closing windows and publishing
// their results to a memory bus); memory-e2e publishes the events on
// memory:// and lets the stream's handler fold them, publish included.
// events/s is the figure to read, and events/cpu-s on a busy machine.
func BenchmarkWindow(b *testing.B) {
	n := benchEvents(b)
	in := benchInput(n)
	direct := func(b *testing.B, window stream.Option) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			bus, err := ripple.Open(context.Background(), "memory://", ripple.WithLogger(quiet))
			if err != nil {
				b.Fatal(err)
			}
			s := stream.New(bus, "bench", "order.placed", window,
				stream.KeyByData(func(p payload) string { return p.Plan }),
				stream.AllowedLateness(5*time.Second), stream.Emit(resultType), stream.WithLogger(quiet))
			if err := stream.Aggregate(s, func() sums { return sums{} }, func(a sums, p payload) sums {
				a.N++
				a.Sum += p.Amount
				return a
			}); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.StartTimer()
			start, cpu0 := time.Now(), cpuTime()
			for _, e := range in {
				if err := s.Handle(ctx, e); err != nil {
					b.Fatal(err)
				}
			}
			report(b, n, start, cpu0)
			b.StopTimer()
			if st := s.Stats(); st.Events != int64(n) {
				b.Fatalf("stats %+v, want %d events", st, n)
			}
			_ = bus.Close()
		}
	}
	b.Run("direct/tumbling-1m", func(b *testing.B) { direct(b, stream.Tumbling(time.Minute)) })
	b.Run("direct/hopping-1m-10s", func(b *testing.B) { direct(b, stream.Hopping(time.Minute, 10*time.Second)) })
	b.Run("memory-e2e/tumbling-1m", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			ctx := context.Background()
			bus, err := ripple.Open(ctx, "memory://", ripple.WithLogger(quiet))
			if err != nil {
				b.Fatal(err)
			}
			s := stream.New(bus, "bench", "order.placed", stream.Tumbling(time.Minute),
				stream.KeyByData(func(p payload) string { return p.Plan }),
				stream.AllowedLateness(5*time.Second), stream.Emit(resultType), stream.WithLogger(quiet))
			if err := s.Count(); err != nil {
				b.Fatal(err)
			}
			if err := bus.Start(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start, cpu0 := time.Now(), cpuTime()
			// Publishers take the events in turn, so they are published
			// in about time order, as by a live system.
			const publishers = 8
			var next atomic.Int64
			var wg sync.WaitGroup
			for range publishers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := int(next.Add(1) - 1); j < n; j = int(next.Add(1) - 1) {
						e := in[j]
						if _, err := bus.Publish(ctx, e.Type, json.RawMessage(e.Data), ripple.WithID(e.ID), ripple.WithSource(e.Source), ripple.WithEventTime(e.Time)); err != nil {
							panic(fmt.Sprint("publish: ", err))
						}
					}
				}()
			}
			wg.Wait()
			deadline := time.Now().Add(10 * time.Minute)
			for {
				st := s.Stats()
				if st.Events+st.Dropped >= int64(n) {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("stream still at %+v after 10 minutes", st)
				}
				time.Sleep(time.Millisecond)
			}
			report(b, n, start, cpu0)
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(st.Dropped), "dropped")
			_ = bus.Close()
		}
	})
}
