package redis

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
// payload awaited one at a time, and pipelined. BenchmarkTargets compares
// the driver with that baseline in interleaved rounds and reports the
// ratios directly, which is what to look at on a shared, noisy machine:
//
//	RIPPLE_TEST_REDIS_URL=… go test -run '^$' -bench Targets -benchtime 10000x ./transport/redis/

var benchPayload = []byte(`{"user_id":"u_123456","email":"someone@example.com","plan":"pro"}`)

func benchMsg(i int) *transport.Message {
	return &transport.Message{
		ID: fmt.Sprintf("b%d-%s", i, randHex(6)), Type: "user.signup.completed", Time: time.Now(),
		Attrs: map[string]string{"source": "bench", "datacontenttype": "application/json", "correlationid": "c"},
		Data:  benchPayload,
		// As for an event published without WithID.
		IDGenerated: true,
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

// BenchmarkRoundTrip measures one awaited PING, on an otherwise idle
// process and with a goroutine spinning beside it. On a virtual machine
// the gap between the two is the cost of waking an idle virtual CPU, which
// bounds any client's rate with one awaiting caller: the benchmark shows
// how much of a one-publisher rate is the machine rather than the code.
func BenchmarkRoundTrip(b *testing.B) {
	for _, spin := range []bool{false, true} {
		b.Run(fmt.Sprintf("spinning=%v", spin), func(b *testing.B) {
			d := openTest(b)
			c, ctx := d.client, context.Background()
			var stop atomic.Bool
			var spinning sync.WaitGroup
			if spin {
				spinning.Go(func() {
					for !stop.Load() {
					}
				})
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.Ping(ctx).Err(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			stop.Store(true)
			spinning.Wait()
		})
	}
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
	publishPaced(ctx, b, d)
	<-done
	b.StopTimer()
	reportLatency(b, lat)
}

// publishPaced publishes b.N events at 1,000 per second.
func publishPaced(ctx context.Context, b *testing.B, d transport.Driver) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 0; i < b.N; i++ {
		<-tick.C
		if err := d.Publish(ctx, []*transport.Message{benchMsg(i)}); err != nil {
			b.Fatal(err)
		}
	}
}

// reportLatency reports the p50, p99 and maximum of lat.
func reportLatency(b *testing.B, lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) }
	b.ReportMetric(pct(0.5), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(1), "max-µs")
	b.ReportMetric(0, "ns/op")
}

// coreReceiver receives and settles the way the core does: up to conc
// deliveries in flight, each settled alone from its own goroutine. It
// counts settled deliveries and signals when the count reaches target.
type coreReceiver struct {
	mu      sync.Mutex
	settled int64
	target  int64
	reached chan struct{}
}

func (r *coreReceiver) expect(n int64) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target += n
	r.reached = make(chan struct{})
	if r.settled >= r.target {
		close(r.reached)
	}
	return r.reached
}

func (r *coreReceiver) add() {
	r.mu.Lock()
	r.settled++
	if r.settled == r.target {
		close(r.reached)
	}
	r.mu.Unlock()
}

func (r *coreReceiver) run(ctx context.Context, b *testing.B, s transport.Subscription, conc int, onDelivery func(*transport.Delivery)) {
	slots := make(chan struct{}, conc)
	for ctx.Err() == nil {
		slots <- struct{}{}
		want := 1
	fill:
		for want < 64 {
			select {
			case slots <- struct{}{}:
				want++
			default:
				break fill
			}
		}
		ds, err := s.Receive(ctx, want)
		for range want - len(ds) {
			<-slots
		}
		if err != nil {
			return
		}
		for _, d := range ds {
			if onDelivery != nil {
				onDelivery(d)
			}
			go func() {
				defer func() { <-slots }()
				if err := s.Settle(context.Background(), []transport.Settlement{{Delivery: d, Outcome: transport.Complete}}); err != nil {
					b.Error(err)
				}
				r.add()
			}()
		}
	}
}

// BenchmarkTargets measures the driver against raw XADDs on the same
// server in interleaved rounds of 1,000 events, so that load from other
// processes affects both sides of each ratio alike. The receiver behaves
// like the core (concurrency 16, one Settle call per delivery). It reports
// events/s of each mode and the two ratios the driver is held to:
// e2e-1/raw-awaited (one awaiting publisher) and e2e-16/raw-pipelined
// (16 concurrent publishers). b.N is the number of events per mode.
func BenchmarkTargets(b *testing.B) {
	const chunk = 1000
	d := openTest(b)
	s := subscribe(b, d, "h", "user.>", time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rcv := &coreReceiver{}
	go rcv.run(ctx, b, s, 16, nil)
	c := d.client
	fields := func(i int) []any {
		return []any{"id", fmt.Sprintf("b%d", i), "type", "user.signup.completed", "time", time.Now().Format(time.RFC3339Nano),
			"ce_source", "bench", "ce_datacontenttype", "application/json", "ce_correlationid", "c", "data", benchPayload}
	}
	// Wall time is what the targets are about; CPU time per event (this
	// process plus redis-server) is reported too because, unlike wall
	// time, it hardly depends on what else the machine is running.
	type acc struct{ wall, cpu, server time.Duration }
	var tRaw, tPipe, tE2E1, tE2E16 acc
	timed := func(a *acc, fn func()) {
		p0, s0 := processCPU(), serverCPU(b, c)
		start := time.Now()
		fn()
		a.wall += time.Since(start)
		p1, s1 := processCPU(), serverCPU(b, c)
		a.cpu += p1 - p0 + s1 - s0
		a.server += s1 - s0
	}
	e2e := func(base, n, p int) {
		reached := rcv.expect(int64(n))
		parallel(n, p, func(i int) {
			if err := d.Publish(ctx, []*transport.Message{benchMsg(base + i)}); err != nil {
				b.Error(err)
			}
		})
		<-reached
	}
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		timed(&tRaw, func() {
			for i := range n {
				if err := c.XAdd(ctx, &goredis.XAddArgs{Stream: d.prefix + ":raw", Values: fields(done + i)}).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
		timed(&tE2E1, func() { e2e(done, n, 1) })
		timed(&tPipe, func() {
			for i := 0; i < n; i += 64 {
				pipe := c.Pipeline()
				for j := i; j < min(i+64, n); j++ {
					pipe.XAdd(ctx, &goredis.XAddArgs{Stream: d.prefix + ":raw", Values: fields(done + j)})
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		timed(&tE2E16, func() { e2e(done, n, 16) })
		if err := c.Del(ctx, d.prefix+":raw").Err(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	rate := func(a acc) float64 { return float64(b.N) / a.wall.Seconds() }
	cpu := func(a acc) float64 { return float64(a.cpu.Microseconds()) / float64(b.N) }
	server := func(a acc) float64 { return float64(a.server.Microseconds()) / float64(b.N) }
	b.ReportMetric(cpu(tRaw), "cpu-µs/raw-awaited")
	b.ReportMetric(cpu(tPipe), "cpu-µs/raw-pipelined")
	b.ReportMetric(cpu(tE2E1), "cpu-µs/e2e-1")
	b.ReportMetric(cpu(tE2E16), "cpu-µs/e2e-16")
	b.ReportMetric(server(tE2E1), "redis-cpu-µs/e2e-1")
	b.ReportMetric(server(tE2E16), "redis-cpu-µs/e2e-16")
	b.ReportMetric(rate(tRaw), "raw-awaited/s")
	b.ReportMetric(rate(tPipe), "raw-pipelined/s")
	b.ReportMetric(rate(tE2E1), "e2e-1/s")
	b.ReportMetric(rate(tE2E16), "e2e-16/s")
	b.ReportMetric(rate(tE2E1)/rate(tRaw), "ratio-1(≥0.8)")
	b.ReportMetric(rate(tE2E16)/rate(tPipe), "ratio-16(≥0.5)")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkLatencyCore is BenchmarkLatency with a receiver that behaves
// like the core: it keeps receiving while deliveries settle concurrently.
// Use -benchtime 3000x for three seconds at 1,000 events/s.
func BenchmarkLatencyCore(b *testing.B) {
	d := openTest(b)
	s := subscribe(b, d, "h", "user.>", time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	rcv := &coreReceiver{}
	reached := rcv.expect(int64(b.N))
	go rcv.run(ctx, b, s, 16, func(d *transport.Delivery) {
		mu.Lock()
		lat = append(lat, time.Since(d.Time))
		mu.Unlock()
	})
	b.ResetTimer()
	publishPaced(ctx, b, d)
	<-reached
	b.StopTimer()
	reportLatency(b, lat)
}

// processCPU is the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serverCPU is the CPU time redis-server has used, from INFO cpu.
func serverCPU(b *testing.B, c *goredis.Client) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for line := range strings.SplitSeq(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
