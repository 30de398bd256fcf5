package bench

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"
	goredis "github.com/redis/go-redis/v9"
)

// asynqPoll is asynq's TaskCheckInterval here: how long an idle worker
// waits before looking for a task again. The default is 1 s; 10 ms gives
// asynq its best showing at the cost of more Redis load while idle.
const asynqPoll = 10 * time.Millisecond

// Asynq is github.com/hibiken/asynq: one Client.Enqueue per event into a
// queue of the instance's own, and a Server with Concurrency 10 whose
// handler counts. Completed tasks are deleted at once (asynq's default,
// no Retention). asynq has one consumer per task, so it cannot fan out.
func Asynq(url string) System {
	return System{
		Name:     "asynq",
		Group:    "redis",
		Consumes: true,
		Notes:    "asynq, one Client.Enqueue per event, Server Concurrency 10, TaskCheckInterval 10 ms (default 1 s)",
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			if handlers != 1 {
				return nil, errors.New("asynq delivers each task to one handler; it cannot fan out")
			}
			c, err := newRedisClient(ctx, url, 0)
			if err != nil {
				return nil, err
			}
			a := &asynqInstance{c: c, queue: newNamespace(), client: asynq.NewClientFromRedisClient(c)}
			a.srv = asynq.NewServerFromRedisClient(c, asynq.Config{
				Concurrency:       HandlerConcurrency,
				Queues:            map[string]int{a.queue: 1},
				TaskCheckInterval: asynqPoll,
				Logger:            nopAsynqLogger{},
				LogLevel:          asynq.FatalLevel,
			})
			if err := a.srv.Start(asynq.HandlerFunc(func(_ context.Context, t *asynq.Task) error {
				h(t.Payload())
				return nil
			})); err != nil {
				return nil, errors.Join(err, c.Close())
			}
			return a, nil
		},
	}
}

type asynqInstance struct {
	c      *goredis.Client
	queue  string
	client *asynq.Client
	srv    *asynq.Server
}

func (a *asynqInstance) Publish(ctx context.Context, payload []byte) error {
	_, err := a.client.EnqueueContext(ctx, asynq.NewTask(EventType, payload), asynq.Queue(a.queue))
	return err
}

func (a *asynqInstance) Close() error {
	a.srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	insp := asynq.NewInspectorFromRedisClient(a.c)
	err := insp.DeleteQueue(a.queue, true)
	if errors.Is(err, asynq.ErrQueueNotFound) {
		err = nil
	}
	// DeleteQueue leaves the queue's statistics counters. The asynq Client
	// and Server share a.c and leave closing it to its owner.
	return errors.Join(err, deleteKeys(ctx, a.c, "asynq:{"+a.queue+"}:*"), a.c.Close())
}

// nopAsynqLogger silences asynq, which logs its start and stop at Info.
type nopAsynqLogger struct{}

func (nopAsynqLogger) Debug(...any) {}
func (nopAsynqLogger) Info(...any)  {}
func (nopAsynqLogger) Warn(...any)  {}
func (nopAsynqLogger) Error(...any) {}
func (nopAsynqLogger) Fatal(...any) {}
