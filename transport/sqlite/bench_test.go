package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// BenchmarkPublish measures durable publishes (one message per call, one
// matching subscription) with 1 and 16 concurrent awaiting publishers.
// Compare with BenchmarkRawCommit, the ceiling for one commit per call.
func BenchmarkPublish(b *testing.B) {
	for _, mode := range []string{"full", "normal"} {
		for _, pubs := range []int{1, 16} {
			b.Run(fmt.Sprintf("sync=%s/publishers=%d", mode, pubs), func(b *testing.B) {
				path := filepath.Join(b.TempDir(), "bench.db")
				drv, err := Open(context.Background(), "sqlite://"+path+"?synchronous="+mode, transport.Config{})
				if err != nil {
					b.Fatal(err)
				}
				defer drv.Close()
				if _, err := drv.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "h", Pattern: "bench.>"}); err != nil {
					b.Fatal(err)
				}
				data := make([]byte, 200)
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for p := 0; p < pubs; p++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							m := &transport.Message{ID: fmt.Sprintf("b-%d", i), Type: "bench.event.happened", Key: "k",
								Time: time.Now(), Attrs: map[string]string{"source": "bench"}, Data: data}
							if err := drv.Publish(context.Background(), []*transport.Message{m}); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				w := drv.(*driver).w
				b.ReportMetric(float64(w.batched.Load())/float64(w.batches.Load()), "ops/batch")
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			})
		}
	}
}

// BenchmarkRawCommit is a loop of single-row INSERT transactions on one
// connection in WAL mode: what one awaiting publisher could at best reach.
func BenchmarkRawCommit(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("sync="+sync, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "raw.db")
			db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=synchronous("+sync+")")
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(1)
			if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`); err != nil {
				b.Fatal(err)
			}
			ins, err := db.Prepare(`INSERT INTO t (v) VALUES (?)`)
			if err != nil {
				b.Fatal(err)
			}
			data := make([]byte, 200)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := ins.Exec(data); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkLatency publishes at a steady 1000 events/s while a receiver
// handles them and reports the publish-to-receive p50 and p99.
func BenchmarkLatency(b *testing.B) {
	path := filepath.Join(b.TempDir(), "lat.db")
	drv, err := Open(context.Background(), "sqlite://"+path, transport.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	sub, err := drv.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "h", Pattern: "lat.>"})
	if err != nil {
		b.Fatal(err)
	}
	n := max(b.N, 200)
	sent := make([]time.Time, n)
	lat := make([]time.Duration, 0, n)
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		got := 0
		for got < n {
			ds, err := sub.Receive(context.Background(), 100)
			if err != nil {
				b.Error(err)
				return
			}
			now := time.Now()
			var ss []transport.Settlement
			mu.Lock()
			for _, d := range ds {
				var i int
				fmt.Sscanf(d.ID, "l-%d", &i)
				lat = append(lat, now.Sub(sent[i]))
				ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
			}
			mu.Unlock()
			got += len(ds)
			go sub.Settle(context.Background(), ss)
		}
	}()
	b.ResetTimer()
	tick := time.NewTicker(time.Millisecond)
	for i := 0; i < n; i++ {
		<-tick.C
		m := &transport.Message{ID: fmt.Sprintf("l-%d", i), Type: "lat.x", Data: []byte("x")}
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		go drv.Publish(context.Background(), []*transport.Message{m})
	}
	tick.Stop()
	<-done
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
