package kafka

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ripplehq/ripple"
)

// BenchmarkPublish: one publisher awaiting each acknowledgement.
func BenchmarkPublish(b *testing.B) {
	bus, err := ripple.Open(context.Background(), newURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	for b.Loop() {
		if _, err := bus.Publish(context.Background(), "bench.event.published", 1); err != nil {
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
