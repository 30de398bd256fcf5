package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
)

// watermillAMQPNotes says how WatermillAMQP is configured, for the report.
const watermillAMQPNotes = "watermill-amqp v3 NewDurableQueueConfig (default exchange, durable queue, persistent messages) " +
	"with the queue declared as a quorum queue, ConfirmDelivery (each Publish awaits its confirm), " +
	"a pool of 16 publisher channels; 10 subscriptions on one queue, prefetch 10 each, ack after counting"

// WatermillAMQP is Watermill's AMQP Pub/Sub (watermill-amqp v3) on
// NewDurableQueueConfig: messages published persistent to the default
// exchange with the topic as routing key, into one durable queue named
// after the topic. Three settings differ from that config's defaults, to
// compare like with like: the queue is a quorum queue (x-queue-type, as
// ripple-amqp's handler queues and the raw ceilings use), publisher
// confirms are on (Publish.ConfirmDelivery: each Publish waits for its
// confirm, so a nil return means the broker has the message), and the
// publisher keeps a pool of 16 confirm channels (Publish.ChannelPoolSize;
// with 0 it opens and closes a channel per Publish) so that 16 publishers
// each have one. A watermill-amqp subscription hands out one message at a
// time on its own channel and takes the next only after the previous is
// acked, so the handler at concurrency 10 is 10 subscriptions competing on
// the queue, each with prefetch 10 (the config's default is 1). A queue
// config cannot fan out: with more than one handler Open fails.
func WatermillAMQP(url string) System {
	return System{
		Name:     "watermill-amqp",
		Group:    "amqp",
		Consumes: true,
		Notes:    watermillAMQPNotes,
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			if handlers != 1 {
				return nil, fmt.Errorf("watermill-amqp: a durable queue config has one queue of competing consumers, it cannot fan out to %d handlers", handlers)
			}
			topic := newNamespace() + ".wm"
			cfg := wmamqp.NewDurableQueueConfig(url)
			cfg.Queue.Arguments = amqp.Table{"x-queue-type": "quorum"}
			cfg.Publish.ConfirmDelivery = true
			cfg.Publish.ChannelPoolSize = 16
			cfg.Consume.Qos.PrefetchCount = HandlerConcurrency
			w := &watermillAMQPInstance{url: url, topic: topic}
			var err error
			w.sub, err = wmamqp.NewSubscriber(cfg, watermill.NopLogger{})
			if err != nil {
				return nil, err
			}
			// Subscribing declares the queue, so it exists before the
			// first publish (the default exchange drops what no queue
			// takes).
			for range HandlerConcurrency {
				msgs, err := w.sub.Subscribe(context.Background(), topic)
				if err != nil {
					return nil, errors.Join(err, w.Close())
				}
				countAndAck(&w.wg, msgs, h)
			}
			w.pub, err = wmamqp.NewPublisher(cfg, watermill.NopLogger{})
			if err != nil {
				return nil, errors.Join(err, w.Close())
			}
			return w, nil
		},
	}
}

type watermillAMQPInstance struct {
	url   string
	topic string
	pub   *wmamqp.Publisher
	sub   *wmamqp.Subscriber
	wg    sync.WaitGroup
}

func (w *watermillAMQPInstance) Publish(ctx context.Context, payload []byte) error {
	m := message.NewMessage(watermill.NewUUID(), payload)
	m.SetContext(ctx)
	return w.pub.Publish(w.topic, m)
}

// Close stops the subscriptions and the publisher and deletes the queue.
func (w *watermillAMQPInstance) Close() error {
	var errs []error
	if w.sub != nil {
		errs = append(errs, w.sub.Close())
	}
	w.wg.Wait()
	if w.pub != nil {
		errs = append(errs, w.pub.Close())
	}
	c, err := amqp.Dial(w.url)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	_, err = ch.QueueDelete(w.topic, false, false, false)
	return errors.Join(append(errs, err)...)
}
