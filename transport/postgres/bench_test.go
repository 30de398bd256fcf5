package postgres

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ripplehq/ripple/transport"
)

func benchMsg(i int64) *transport.Message {
	return &transport.Message{ID: "b" + strconv.FormatInt(i, 10), Type: "bench.event.done", Time: time.Now(),
		Attrs: map[string]string{"source": "bench", "datacontenttype": "application/json"}, Data: []byte(`{"user":"u-123","plan":"pro"}`), IDGenerated: true}
}

// BenchmarkPublish is one awaiting publisher; BenchmarkPublishParallel
// runs 16 (b.SetParallelism with GOMAXPROCS 1..2 gives 16-32).
func BenchmarkPublish(b *testing.B) {
	d := openDriver(b, schemaURL(b))
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "sink", Pattern: "bench.>"}); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.ResetTimer()
	for b.Loop() {
		if err := d.Publish(bg, []*transport.Message{benchMsg(n.Add(1))}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPublishParallel(b *testing.B) {
	d := openDriver(b, schemaURL(b))
	if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "sink", Pattern: "bench.>"}); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := d.Publish(bg, []*transport.Message{benchMsg(n.Add(1))}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRawInsertCommit is the ceiling for one awaiting publisher: a
// single-row INSERT committed per event on one connection.
func BenchmarkRawInsertCommit(b *testing.B) {
	c := rawConn(b)
	table := pgx.Identifier{"public", "raw_" + randHex(4)}.Sanitize()
	if _, err := c.Exec(bg, "CREATE TABLE "+table+" (id bigserial PRIMARY KEY, data bytea)"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = c.Exec(context.Background(), "DROP TABLE "+table) })
	data := []byte(`{"user":"u-123","plan":"pro"}`)
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Exec(bg, "INSERT INTO "+table+" (data) VALUES ($1)", data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEndToEnd publishes b.N events and waits until a receiver has
// leased and completed them all.
func BenchmarkEndToEnd(b *testing.B) {
	d := openDriver(b, schemaURL(b))
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "sink", Pattern: "bench.>"})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	done := make(chan struct{})
	total := b.N
	go func() {
		defer close(done)
		got := 0
		for got < total {
			ds, err := sub.Receive(bg, 64)
			if err != nil {
				b.Error(err)
				return
			}
			ss := make([]transport.Settlement, len(ds))
			for i, dl := range ds {
				ss[i] = transport.Settlement{Delivery: dl, Outcome: transport.Complete}
			}
			if err := sub.Settle(bg, ss); err != nil {
				b.Error(err)
				return
			}
			got += len(ds)
		}
	}()
	b.ResetTimer()
	var n atomic.Int64
	const publishers = 16
	errs := make(chan error, publishers)
	for range publishers {
		go func() {
			for {
				i := n.Add(1)
				if i > int64(total) {
					errs <- nil
					return
				}
				if err := d.Publish(bg, []*transport.Message{benchMsg(i)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range publishers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	<-done
}
