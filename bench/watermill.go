package bench

import (
	"context"
	"errors"
	"slices"
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

// watermillPeer is a Watermill publisher and the subscribers reading its
// topic, as the broker-backed Watermill systems run them.
type watermillPeer struct {
	topic string
	pub   message.Publisher // nil until made
	subs  []message.Subscriber
	wg    sync.WaitGroup
	// cleanup removes what the run left on the server; nil: nothing.
	cleanup func() error
}

// read subscribes sub to the topic and counts its messages with h in
// readers goroutines, each acking after counting.
func (w *watermillPeer) read(sub message.Subscriber, readers int, h HandleFunc) error {
	if !slices.Contains(w.subs, sub) {
		w.subs = append(w.subs, sub)
	}
	msgs, err := sub.Subscribe(context.Background(), w.topic)
	if err != nil {
		return err
	}
	for range readers {
		countAndAck(&w.wg, msgs, h)
	}
	return nil
}

// Publish publishes payload as a new message, carrying ctx.
func (w *watermillPeer) Publish(ctx context.Context, payload []byte) error {
	m := message.NewMessage(watermill.NewUUID(), payload)
	m.SetContext(ctx)
	return w.pub.Publish(w.topic, m)
}

// Close stops the subscribers, waits for their readers, closes the
// publisher and cleans up.
func (w *watermillPeer) Close() error {
	var errs []error
	for _, s := range w.subs {
		errs = append(errs, s.Close())
	}
	w.wg.Wait()
	if w.pub != nil {
		errs = append(errs, w.pub.Close())
	}
	if w.cleanup != nil {
		errs = append(errs, w.cleanup())
	}
	return errors.Join(errs...)
}
