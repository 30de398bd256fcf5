package amqp

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// BenchmarkRawConfirmAwaited is the ceiling for one publisher: amqp091
// publishing persistent messages to a quorum queue and awaiting each
// confirm.
func BenchmarkRawConfirmAwaited(b *testing.B) {
	ch, q := rawQuorum(b)
	b.ResetTimer()
	for b.Loop() {
		dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte(`{"n":1}`)})
		if err != nil || !dc.Wait() {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawConfirmPipelined16 keeps 16 confirms in flight.
func BenchmarkRawConfirmPipelined16(b *testing.B) {
	ch, q := rawQuorum(b)
	window := make(chan *amqp.DeferredConfirmation, 16)
	done := make(chan struct{})
	go func() {
		for dc := range window {
			if !dc.Wait() {
				b.Error("nack")
			}
		}
		close(done)
	}()
	b.ResetTimer()
	for b.Loop() {
		dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte(`{"n":1}`)})
		if err != nil {
			b.Fatal(err)
		}
		window <- dc
	}
	close(window)
	<-done
}

func rawQuorum(b *testing.B) (*amqp.Channel, string) {
	c, err := amqp.Dial(serverURL(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	ch, _ := c.Channel()
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	q := "bench.raw." + randHex(4)
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if ch2, err := c.Channel(); err == nil {
			_, _ = ch2.QueueDelete(q, false, false, false)
		}
	})
	return ch, q
}

// BenchmarkEndToEnd publishes with `publishers` goroutines awaiting each
// Publish and counts b.N events handled by `handlers` handlers.
func benchEndToEnd(b *testing.B, publishers, handlers int) {
	bus, err := ripple.Open(context.Background(), namespaceURL(b), ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	var handled atomic.Int64
	for i := range handlers {
		if err := bus.On("bench.e2e.sent", "bench.h"+string(rune('a'+i)), func(context.Context, ripple.Event) error {
			handled.Add(1)
			return nil
		}, ripple.Concurrency(16)); err != nil {
			b.Fatal(err)
		}
	}
	if err := bus.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, err := bus.Publish(context.Background(), "bench.e2e.sent", map[string]int{"n": 1}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for handled.Load() < int64(b.N*handlers) {
		time.Sleep(time.Millisecond)
	}
}

func BenchmarkEndToEnd1Publisher(b *testing.B)   { benchEndToEnd(b, 1, 1) }
func BenchmarkEndToEnd16Publishers(b *testing.B) { benchEndToEnd(b, 16, 1) }
func BenchmarkEndToEnd5Handlers(b *testing.B)    { benchEndToEnd(b, 16, 5) }

// BenchmarkPublish16 is the driver's Publish alone, 16 publishers, into
// one handler queue.
func BenchmarkPublish16(b *testing.B) {
	d, err := Open(context.Background(), namespaceURL(b), transportConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Subscribe(context.Background(), subSpec("bench.pub", "bench.pub.sent")); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := d.Publish(context.Background(), []*transport.Message{msg(1, "bench.pub.sent")}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func transportConfig() transport.Config { return transport.Config{} }

func subSpec(name, pattern string) transport.SubscriptionSpec {
	return transport.SubscriptionSpec{Name: name, Pattern: pattern, Lease: time.Minute}
}
