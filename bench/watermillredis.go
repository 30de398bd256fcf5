package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
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
			w := &watermillPeer{topic: topic, cleanup: func() error { return deleteRedisKey(url, topic) }}
			pc, err := newRedisClient(ctx, url, 0)
			if err != nil {
				return nil, err
			}
			pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: pc}, watermill.NopLogger{})
			if err != nil {
				_ = pc.Close()
				return nil, err
			}
			w.pub = pub
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
					if err := w.read(sub, 1, h); err != nil {
						return nil, errors.Join(err, w.Close())
					}
				}
			}
			return w, nil
		},
	}
}

// deleteRedisKey deletes the key a run left on the Redis server at url.
func deleteRedisKey(url, key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := newRedisClient(ctx, url, 0)
	if err != nil {
		return err
	}
	return errors.Join(c.Del(ctx, key).Err(), c.Close())
}
