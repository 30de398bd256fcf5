package kafka

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// payload200 is about 200 bytes of JSON, like the bench module's events.
var payload200 = map[string]string{"data": strings.Repeat("x", 185)}

// BenchmarkPublish: one publisher awaiting each acknowledgement.
func BenchmarkPublish(b *testing.B) {
	bus, err := ripple.Open(context.Background(), newURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	for b.Loop() {
		if _, err := bus.Publish(context.Background(), "bench.event.published", payload200); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEndToEnd: 16 publishers, one handler with Concurrency(16);
// the clock stops when every event has been handled.
func BenchmarkEndToEnd(b *testing.B) {
	url := newURL(b)
	bus, err := ripple.Open(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	var done atomic.Int64
	all := make(chan struct{})
	target := int64(b.N)
	if err := bus.On("bench.event.handled", "bench.sink", func(context.Context, ripple.Event) error {
		if done.Add(1) == target {
			close(all)
		}
		return nil
	}, ripple.Concurrency(16)); err != nil {
		b.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 16 {
		wg.Go(func() {
			for next.Add(1) <= target {
				if _, err := bus.Publish(context.Background(), "bench.event.handled", 1); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	<-all
}

// BenchmarkRawProduce is franz-go's awaited produce of a 200-byte record
// on the same cluster: the ceiling BenchmarkPublish compares with.
func BenchmarkRawProduce(b *testing.B) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...), kgo.ProducerLinger(0), kgo.RequiredAcks(kgo.AllISRAcks()))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	topic := fmt.Sprintf("raw-%d", time.Now().UnixNano())
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 4, -1, nil, topic); err != nil {
		b.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), 200)
	for b.Loop() {
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Value: payload}).FirstErr(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStartFromBeginning: a new subscription reading b.N retained
// events from the beginning of the log through Receive and Settle (the
// driver alone, as a projection rebuilding its read model would).
func BenchmarkStartFromBeginning(b *testing.B) {
	dr, err := Open(context.Background(), newURL(b), transport.Config{})
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
		if err := dr.Publish(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	sub, err := dr.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "bench.projection", Pattern: "bench.>", Lease: time.Minute, From: transport.Beginning})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	for n := 0; n < b.N; {
		ds, err := sub.Receive(context.Background(), 256)
		if err != nil {
			b.Fatal(err)
		}
		ss := make([]transport.Settlement, len(ds))
		for i, d := range ds {
			ss[i] = transport.Settlement{Delivery: d, Outcome: transport.Complete}
		}
		if err := sub.Settle(context.Background(), ss); err != nil {
			b.Fatal(err)
		}
		n += len(ds)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
