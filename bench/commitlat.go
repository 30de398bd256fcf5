package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// CommitLatency is the latency of raw single-row SQLite commits at a paced
// rate: what the disk alone adds to a durable publish, and the stalls that
// delay every event queued behind them.
type CommitLatency struct {
	Commits int
	// OwnP50, OwnP99 and OwnMax are each commit's own duration (the
	// loop's sleeps make latencies from the pace meaningless past 1,000/s);
	// Over5ms and Over20ms count the commits that took longer.
	OwnP50, OwnP99, OwnMax time.Duration
	Over5ms, Over20ms      int
	Synchronous            string
	Rate                   int
	For                    time.Duration
}

func (c CommitLatency) String() string {
	s := fmt.Sprintf("%d commits (synchronous=%s, %d/s for %v): each commit p50 %v, p99 %v, max %v, %d over 5 ms, %d over 20 ms",
		c.Commits, c.Synchronous, c.Rate, c.For, c.OwnP50.Round(time.Microsecond), c.OwnP99.Round(time.Microsecond), c.OwnMax.Round(time.Microsecond), c.Over5ms, c.Over20ms)
	return s
}

// MeasureCommitLatency commits one 200-byte row per transaction into a
// fresh SQLite file (WAL, the given synchronous level) at rate commits per
// second for d, one awaiting committer as in the latency scenario, and
// returns the distribution of the commits' own durations: the disk's
// stalls, which delay every event queued behind them.
func MeasureCommitLatency(ctx context.Context, synchronous string, rate int, d time.Duration) (CommitLatency, error) {
	dir, err := os.MkdirTemp("", "ripple-bench-commit-*")
	if err != nil {
		return CommitLatency{}, err
	}
	defer os.RemoveAll(dir)
	db, err := openSQLite(filepath.Join(dir, "raw.db"), synchronous)
	if err != nil {
		return CommitLatency{}, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE events (seq INTEGER PRIMARY KEY, data BLOB)`); err != nil {
		return CommitLatency{}, err
	}
	payload := make([]byte, PayloadSize)
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	own := make([]time.Duration, 0, total)
	start := time.Now()
	for i := range total {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		t0 := time.Now()
		if _, err := db.ExecContext(ctx, `INSERT INTO events (data) VALUES (?)`, payload); err != nil {
			return CommitLatency{}, err
		}
		own = append(own, time.Since(t0))
	}
	c := CommitLatency{Commits: len(own), Synchronous: synchronous, Rate: rate, For: d}
	slices.Sort(own)
	c.OwnP50, c.OwnP99, c.OwnMax = percentile(own, 50), percentile(own, 99), own[len(own)-1]
	for _, l := range own {
		if l > 5*time.Millisecond {
			c.Over5ms++
		}
		if l > 20*time.Millisecond {
			c.Over20ms++
		}
	}
	return c, nil
}
