package redis

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

// Run with, for example:
//
//	RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:6390/0 go test -run '^$' -bench . -benchtime 20000x ./transport/redis/
//
// The Raw benchmarks are the baseline on the same server: XADD of the same
// payload awaited one at a time, and pipelined.

var benchPayload = []byte(`{"user_id":"u_123456","email":"someone@example.com","plan":"pro"}`)

func benchMsg(i int) *transport.Message {
	return &transport.Message{
		ID: fmt.Sprintf("b%d-%s", i, randHex(6)), Type: "user.signup.completed", Time: time.Now(),
		Attrs: map[string]string{"source": "bench", "datacontenttype": "application/json", "correlationid": "c"},
		Data:  benchPayload,
	}
}

// parallel runs fn(i) for i in [0, n) on p goroutines.
func parallel(n, p int, fn func(i int)) {
	var wg sync.WaitGroup
	for g := 0; g < p; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n; i += p {
				fn(i)
			}
		}()
	}
	wg.Wait()
}

func BenchmarkPublish(b *testing.B) {
	for _, p := range []int{1, 16} {
		b.Run(fmt.Sprintf("publishers=%d", p), func(b *testing.B) {
			d := openTest(b)
			subscribe(b, d, "h", "user.>", time.Minute)
			ctx := context.Background()
			b.ResetTimer()
			parallel(b.N, p, func(i int) {
				if err := d.Publish(ctx, []*transport.Message{benchMsg(i)}); err != nil {
					b.Error(err)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func BenchmarkEndToEnd(b *testing.B) {
	for _, p := range []int{1, 16} {
		b.Run(fmt.Sprintf("publishers=%d", p), func(b *testing.B) {
			d := openTest(b)
			s := subscribe(b, d, "h", "user.>", time.Minute)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan struct{})
			b.ResetTimer()
			go func() {
				got := 0
				for got < b.N {
					ds, err := s.Receive(ctx, 64)
					if err != nil {
						return
					}
					got += len(ds)
					if err := s.Settle(ctx, completeAll(ds)); err != nil {
						b.Error(err)
					}
				}
				close(done)
			}()
			parallel(b.N, p, func(i int) {
				if err := d.Publish(ctx, []*transport.Message{benchMsg(i)}); err != nil {
					b.Error(err)
				}
			})
			<-done
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkRawXAdd is the baseline: plain XADDs of a comparable entry.
func BenchmarkRawXAdd(b *testing.B) {
	fields := func(i int) []any {
		return []any{"id", fmt.Sprintf("b%d", i), "type", "user.signup.completed", "time", time.Now().Format(time.RFC3339Nano),
			"ce_source", "bench", "ce_datacontenttype", "application/json", "ce_correlationid", "c", "data", benchPayload}
	}
	b.Run("awaited", func(b *testing.B) {
		d := openTest(b)
		c, ctx := d.client, context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := c.XAdd(ctx, &goredis.XAddArgs{Stream: d.prefix + ":raw", Values: fields(i)}).Err(); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("pipelined", func(b *testing.B) {
		d := openTest(b)
		c, ctx := d.client, context.Background()
		const batch = 64
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			pipe := c.Pipeline()
			for j := i; j < min(i+batch, b.N); j++ {
				pipe.XAdd(ctx, &goredis.XAddArgs{Stream: d.prefix + ":raw", Values: fields(j)})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}

// BenchmarkLatency publishes at 1,000 events/s and reports the publish to
// receive latency percentiles. Use -benchtime 3000x for three seconds.
func BenchmarkLatency(b *testing.B) {
	d := openTest(b)
	s := subscribe(b, d, "h", "user.>", time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lat := make([]time.Duration, 0, b.N)
	done := make(chan struct{})
	b.ResetTimer()
	go func() {
		defer close(done)
		for len(lat) < b.N {
			ds, err := s.Receive(ctx, 64)
			if err != nil {
				return
			}
			now := time.Now()
			for _, d := range ds {
				lat = append(lat, now.Sub(d.Time))
			}
			_ = s.Settle(ctx, completeAll(ds))
		}
	}()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 0; i < b.N; i++ {
		<-tick.C
		if err := d.Publish(ctx, []*transport.Message{benchMsg(i)}); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) }
	b.ReportMetric(pct(0.5), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(1), "max-µs")
}
