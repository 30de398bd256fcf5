package ripple_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/memory"
)

// BenchmarkEndToEnd measures the core's per-event cost on the memory
// transport: publish from 16 goroutines, one handler at Concurrency(10).
func BenchmarkEndToEnd(b *testing.B) {
	for _, handlers := range []int{1, 5} {
		b.Run(fmt.Sprintf("handlers=%d", handlers), func(b *testing.B) {
			ctx := context.Background()
			bus, err := ripple.Open(ctx, "memory://")
			if err != nil {
				b.Fatal(err)
			}
			defer bus.Close()
			var seen atomic.Int64
			done := make(chan struct{})
			want := int64(b.N * handlers)
			for h := range handlers {
				if err := bus.On("bench.event.created", fmt.Sprintf("count-%d", h), func(ctx context.Context, e ripple.Event) error {
					if seen.Add(1) == want {
						close(done)
					}
					return nil
				}, ripple.Concurrency(10)); err != nil {
					b.Fatal(err)
				}
			}
			if err := bus.Start(ctx); err != nil {
				b.Fatal(err)
			}
			payload := map[string]string{"user_id": "u_0123456789", "email": "someone@example.com", "plan": "pro"}
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N / 16
			for p := range 16 {
				n := per
				if p == 0 {
					n += b.N % 16
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range n {
						if _, err := bus.Publish(ctx, "bench.event.created", payload); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			<-done
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
