package stream

import (
	"fmt"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// BenchmarkAggregate: events through one-minute tumbling windows keyed by
// plan, counting, in time order with some disorder.
func BenchmarkAggregate(b *testing.B) {
	plans := []string{"free", "pro", "team"}
	agg, err := New(Config[int]{Size: time.Minute, Lateness: 10 * time.Second, Key: func(e ripple.Event) (string, error) { return e.Key, nil }})
	if err != nil {
		b.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	evs := make([]ripple.Event, 4096)
	for i := range evs {
		evs[i] = ripple.Event{ID: fmt.Sprintf("e%d", i), Source: "bench", Key: plans[i%3]}
	}
	i := 0
	for b.Loop() {
		e := evs[i%len(evs)]
		e.ID = e.ID + "-" + fmt.Sprint(i/len(evs))
		e.Time = base.Add(time.Duration(i)*time.Millisecond - time.Duration(i%7)*time.Second)
		if _, err := agg.Add(e); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
