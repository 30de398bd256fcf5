package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
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
			w := &watermillPeer{topic: topic, cleanup: func() error { return deleteAMQPQueue(url, topic) }}
			sub, err := wmamqp.NewSubscriber(cfg, watermill.NopLogger{})
			if err != nil {
				return nil, err
			}
			// Subscribing declares the queue, so it exists before the
			// first publish (the default exchange drops what no queue
			// takes).
			for range HandlerConcurrency {
				if err := w.read(sub, 1, h); err != nil {
					return nil, errors.Join(err, w.Close())
				}
			}
			pub, err := wmamqp.NewPublisher(cfg, watermill.NopLogger{})
			if err != nil {
				return nil, errors.Join(err, w.Close())
			}
			w.pub = pub
			return w, nil
		},
	}
}

// deleteAMQPQueue deletes the queue a run left on the broker at url.
func deleteAMQPQueue(url, queue string) error {
	c, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return err
	}
	_, err = ch.QueueDelete(queue, false, false, false)
	return err
}
