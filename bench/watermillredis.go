package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
)

// WatermillRedis is Watermill's Redis Streams Pub/Sub. The publisher sends
// one awaited XADD per message. A redisstream subscription hands out one
// message at a time and reads the next only after the previous one is
// acked, so a handler at concurrency 10 is 10 subscribers (consumers) in one
// consumer group, each acking after counting; a fan-out handler is one more
// consumer group. Each subscriber blocks at most 100 ms per XREADGROUP (its
// default BlockTime, also for the first read), so that Close returns
// promptly.
func WatermillRedis(url string) System {
	return System{
		Name:     "watermill-redis",
		Group:    "redis",
		Consumes: true,
		Notes:    "Watermill redisstream, one awaited XADD per publish; 10 consumers per consumer group, ack after counting",
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			topic := newNamespace() + ":wm"
			w := &watermillRedisInstance{url: url, topic: topic}
			pc, err := newRedisClient(ctx, url, 0)
			if err != nil {
				return nil, err
			}
			w.pub, err = redisstream.NewPublisher(redisstream.PublisherConfig{Client: pc}, watermill.NopLogger{})
			if err != nil {
				_ = pc.Close()
				return nil, err
			}
			for i := range handlers {
				for j := range HandlerConcurrency {
					// Subscriber.Close closes its client, so each has its own.
					sc, err := newRedisClient(ctx, url, 4)
					if err != nil {
						return nil, errors.Join(err, w.Close())
					}
					sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
						Client:                        sc,
						ConsumerGroup:                 fmt.Sprintf("bench-counter-%d", i+1),
						Consumer:                      fmt.Sprintf("consumer-%d", j+1),
						DisableIndefiniteInitialBlock: true,
					}, watermill.NopLogger{})
					if err != nil {
						_ = sc.Close()
						return nil, errors.Join(err, w.Close())
					}
					w.subs = append(w.subs, sub)
					msgs, err := sub.Subscribe(context.Background(), topic)
					if err != nil {
						return nil, errors.Join(err, w.Close())
					}
					countAndAck(&w.wg, msgs, h)
				}
			}
			return w, nil
		},
	}
}

type watermillRedisInstance struct {
	url   string
	topic string
	pub   *redisstream.Publisher
	subs  []*redisstream.Subscriber
	wg    sync.WaitGroup
}

func (w *watermillRedisInstance) Publish(_ context.Context, payload []byte) error {
	return w.pub.Publish(w.topic, message.NewMessage(watermill.NewUUID(), payload))
}

func (w *watermillRedisInstance) Close() error {
	var errs []error
	for _, s := range w.subs {
		errs = append(errs, s.Close())
	}
	w.wg.Wait()
	if w.pub != nil {
		errs = append(errs, w.pub.Close())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := newRedisClient(ctx, w.url, 0)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, c.Del(ctx, w.topic).Err(), c.Close())
	return errors.Join(errs...)
}
