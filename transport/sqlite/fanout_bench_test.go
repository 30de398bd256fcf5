//go:build unix

package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// BenchmarkFanOut measures what each handler adds: 16 publishers publish
// b.N events (one per call) while h unordered handlers each receive up to
// 64 at a time and complete them, all through the driver contract on one
// file at synchronous=normal. It reports the process's CPU time per event
// and per delivery, which the machine's other load moves less than the
// wall-clock rates; the target is that five handlers cost at most 1.5×
// one (compare cpu-µs/event of handlers=5 with handlers=1).
//
//	go test -run '^$' -bench FanOut -benchtime 20000x ./transport/sqlite/
func BenchmarkFanOut(b *testing.B) {
	for _, h := range []int{1, 5} {
		b.Run(fmt.Sprintf("handlers=%d", h), func(b *testing.B) {
			ctx := context.Background()
			drv, err := Open(ctx, "sqlite://"+filepath.Join(b.TempDir(), "fan.db")+"?synchronous=normal", transport.Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer drv.Close()
			var subs []transport.Subscription
			for i := range h {
				s, err := drv.Subscribe(ctx, transport.SubscriptionSpec{Name: fmt.Sprintf("h%d", i), Pattern: "bench.>", Lease: time.Minute})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				subs = append(subs, s)
			}
			data := make([]byte, 200)
			var handled sync.WaitGroup
			for _, s := range subs {
				handled.Add(1)
				go func() {
					defer handled.Done()
					for n := 0; n < b.N; {
						ds, err := s.Receive(ctx, 64)
						if err != nil {
							b.Error(err)
							return
						}
						ss := make([]transport.Settlement, len(ds))
						for i, d := range ds {
							ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Complete}
						}
						if err := s.Settle(ctx, ss); err != nil {
							b.Error(err)
							return
						}
						n += len(ds)
					}
				}()
			}
			cpu0 := cpuTime()
			start := time.Now()
			b.ResetTimer()
			var next atomic.Int64
			var pubs sync.WaitGroup
			for range 16 {
				pubs.Add(1)
				go func() {
					defer pubs.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						m := &transport.Message{ID: fmt.Sprintf("f-%d", i), Type: "bench.event.happened",
							Time: time.Now(), Attrs: map[string]string{"source": "bench"}, Data: data}
						if err := drv.Publish(ctx, []*transport.Message{m}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			pubs.Wait()
			handled.Wait()
			b.StopTimer()
			cpu := cpuTime() - cpu0
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*h), "cpu-µs/delivery")
			w := drv.(*driver).w
			b.ReportMetric(float64(w.leased.Load())/float64(max(w.leases.Load(), 1)), "deliveries/lease")
			b.ReportMetric(float64(w.batched.Load())/float64(max(w.batches.Load(), 1)), "ops/tx")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
