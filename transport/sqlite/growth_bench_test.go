package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// BenchmarkBacklog measures what handling costs while the log is long:
// with `waiting` events already published for one unordered handler, the
// timed part receives and completes the first 10,000 of them, 64 at a
// time (ns/event), as a worker catching up does, opened after the
// backlog was published (so the recent-events cache holds none of it,
// whatever its size). It also reports the
// bytes on disk per waiting event (database file and WAL after a
// checkpoint, divided by the events). The backlog is 10,000 and 100,000
// events, and 1,000,000 with RIPPLE_BENCH_BIG set.
func BenchmarkBacklog(b *testing.B) {
	backlogs := []int{10_000, 100_000}
	if os.Getenv("RIPPLE_BENCH_BIG") != "" {
		backlogs = append(backlogs, 1_000_000)
	}
	for _, waiting := range backlogs {
		b.Run(fmt.Sprintf("waiting=%d", waiting), func(b *testing.B) {
			const drain = 10_000
			var total time.Duration
			var perEvent float64
			for range b.N {
				elapsed, bytes := backlogOnce(b, waiting, drain)
				total += elapsed
				perEvent = bytes
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(drain*b.N), "ns/event")
			b.ReportMetric(perEvent, "bytes/waiting-event")
		})
	}
}

func backlogOnce(b *testing.B, waiting, drain int) (time.Duration, float64) {
	b.StopTimer()
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "backlog.db")
	drv, err := Open(ctx, "sqlite://"+path+"?synchronous=normal", transport.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	s, err := drv.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "bench.>", Lease: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := []byte(`{"pad":"` + strings.Repeat("x", 190) + `"}`) // 200 bytes, as in bench/
	batch := make([]*transport.Message, 0, 1000)
	for i := range waiting {
		batch = append(batch, &transport.Message{ID: fmt.Sprintf("b-%d", i), Type: "bench.backlog",
			Time: time.Now(), Attrs: map[string]string{"source": "bench"}, Data: data})
		if len(batch) == cap(batch) || i == waiting-1 {
			if err := drv.Publish(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	d := drv.(*driver)
	if _, err := d.mconn.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		b.Fatal(err)
	}
	size := int64(0)
	for _, f := range []string{path, path + "-wal"} {
		if st, err := os.Stat(f); err == nil {
			size += st.Size()
		}
	}
	// The worker starts afresh, as one does after an outage: nothing of
	// the backlog is in its memory, whatever the backlog's size.
	s.Close()
	drv.Close()
	if drv, err = Open(ctx, "sqlite://"+path+"?synchronous=normal", transport.Config{}); err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	if s, err = drv.Subscribe(ctx, transport.SubscriptionSpec{Name: "h", Pattern: "bench.>", Lease: time.Minute}); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.StartTimer()
	start := time.Now()
	for got := 0; got < drain; {
		ds, err := s.Receive(ctx, 64)
		if err != nil {
			b.Fatal(err)
		}
		got += len(ds)
		ss := make([]transport.Settlement, len(ds))
		for i, x := range ds {
			ss[i] = transport.Settlement{Delivery: x, Outcome: transport.Complete}
		}
		if err := s.Settle(ctx, ss); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	return elapsed, float64(size) / float64(waiting)
}
