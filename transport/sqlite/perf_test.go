package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestPerfRatio compares the driver with a raw single-row commit loop in
// interleaved windows, so that a noisy shared disk affects both alike. It
// runs only with RIPPLE_PERF=1 and reports; it does not fail on numbers.
func TestPerfRatio(t *testing.T) {
	if os.Getenv("RIPPLE_PERF") == "" {
		t.Skip("set RIPPLE_PERF=1 to run the interleaved throughput comparison")
	}
	window := 700 * time.Millisecond
	for _, mode := range []string{"FULL", "NORMAL"} {
		dir := t.TempDir()
		raw, err := sql.Open("sqlite", filepath.Join(dir, "raw.db")+"?_pragma=journal_mode(WAL)&_pragma=synchronous("+mode+")")
		if err != nil {
			t.Fatal(err)
		}
		raw.SetMaxOpenConns(1)
		raw.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
		ins, _ := raw.Prepare(`INSERT INTO t (v) VALUES (?)`)
		drv, err := Open(context.Background(), "sqlite://"+filepath.Join(dir, "r.db")+"?synchronous="+mode, transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		drv.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "h", Pattern: "bench.>"})
		data := make([]byte, 200)
		var seq atomic.Int64
		rawRun := func() float64 {
			n := 0
			start := time.Now()
			for time.Since(start) < window {
				if _, err := ins.Exec(data); err != nil {
					t.Fatal(err)
				}
				n++
			}
			return float64(n) / time.Since(start).Seconds()
		}
		pubRun := func(pubs int) float64 {
			var n atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			for range pubs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Since(start) < window {
						m := &transport.Message{ID: fmt.Sprintf("p-%d", seq.Add(1)), Type: "bench.x", Key: "k", Time: time.Now(), Data: data}
						if err := drv.Publish(context.Background(), []*transport.Message{m}); err != nil {
							t.Error(err)
							return
						}
						n.Add(1)
					}
				}()
			}
			wg.Wait()
			return float64(n.Load()) / time.Since(start).Seconds()
		}
		var rs, p1, p16 []float64
		for range 5 {
			rs = append(rs, rawRun())
			p1 = append(p1, pubRun(1))
			p16 = append(p16, pubRun(16))
		}
		med := func(v []float64) float64 { sort.Float64s(v); return v[len(v)/2] }
		r, a, b := med(rs), med(p1), med(p16)
		t.Logf("synchronous=%s: raw commit loop %.0f/s; 1 publisher %.0f/s (%.2f× raw); 16 publishers %.0f/s", mode, r, a, a/r, b)
		drv.Close()
		raw.Close()
	}
}
