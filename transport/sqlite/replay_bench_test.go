package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/sqlite"
)

// BenchmarkStartFromBeginning: a new subscription reading b.N retained
// events from the beginning of history through Receive and Settle (the
// driver alone, as a projection rebuilding its read model would). It is
// the kafka transport's benchmark of the same name, on a SQLite file: the
// events are published (untimed) before any subscription exists, in
// batches of 1,000, then a subscription with From=Beginning takes them in
// batches of 256 and completes each batch. It uses only the driver
// contract, so it runs unchanged on any storage layout of the transport.
//
//	go test -run '^$' -bench StartFromBeginning -benchtime 1000000x ./transport/sqlite/
func BenchmarkStartFromBeginning(b *testing.B) {
	ctx := context.Background()
	dr, err := sqlite.Open(ctx, "sqlite://"+filepath.Join(b.TempDir(), "replay.db"), transport.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer dr.Close()
	data := []byte(`{"data":"` + strings.Repeat("x", 185) + `"}`)
	for i := 0; i < b.N; {
		var batch []*transport.Message
		for ; i < b.N && len(batch) < 1000; i++ {
			batch = append(batch, &transport.Message{ID: fmt.Sprintf("e%d", i), Type: "bench.history.kept", Time: time.Now(), Attrs: map[string]string{"source": "bench"}, Data: data})
		}
		if err := dr.Publish(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	sub, err := dr.Subscribe(ctx, transport.SubscriptionSpec{Name: "bench.projection", Pattern: "bench.>", Lease: time.Minute, From: transport.Beginning})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	for n := 0; n < b.N; {
		ds, err := sub.Receive(ctx, 256)
		if err != nil {
			b.Fatal(err)
		}
		ss := make([]transport.Settlement, len(ds))
		for i, d := range ds {
			ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Complete}
		}
		if err := sub.Settle(ctx, ss); err != nil {
			b.Fatal(err)
		}
		n += len(ds)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
