package bench

import (
	"context"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

// WatermillGoChannel is Watermill's in-memory Pub/Sub with its default
// configuration. Each handler is one subscription read by 10 goroutines that
// ack after the handler returns; GoChannel hands a subscription its next
// message without waiting for the previous ack, so that gives the same
// concurrency as Ripple's Concurrency(10). It keeps nothing on disk and is
// the in-memory ceiling. Each subscription gets every message, so with five
// handlers it runs the fan-out scenario: five subscriptions of ten readers.
func WatermillGoChannel() System {
	return System{
		Name:     "watermill-gochannel",
		Consumes: true,
		FanOut:   true,
		Notes:    "Watermill GoChannel, default config, in memory",
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			ps := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
			w := &watermillInstance{ps: ps}
			for range handlers {
				msgs, err := ps.Subscribe(context.Background(), EventType)
				if err != nil {
					_ = w.Close()
					return nil, err
				}
				for range HandlerConcurrency {
					countAndAck(&w.wg, msgs, h)
				}
			}
			return w, nil
		},
	}
}

type watermillInstance struct {
	ps *gochannel.GoChannel
	wg sync.WaitGroup
}

func (w *watermillInstance) Publish(_ context.Context, payload []byte) error {
	return w.ps.Publish(EventType, message.NewMessage(watermill.NewUUID(), payload))
}

func (w *watermillInstance) Close() error {
	err := w.ps.Close()
	w.wg.Wait()
	return err
}

// countAndAck runs one Watermill consumer: it counts each message's
// payload with h and acks it, until msgs closes.
func countAndAck(wg *sync.WaitGroup, msgs <-chan *message.Message, h func([]byte)) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m := range msgs {
			h(m.Payload)
			m.Ack()
		}
	}()
}
