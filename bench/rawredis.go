package bench

import (
	"context"
	"errors"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// pipelineMax bounds how many XADDs one pipeline of the pipelined ceiling
// carries.
const pipelineMax = 256

// RawXAdd is Redis's ceiling for a publish: one XADD of the payload to a
// stream, with go-redis, and nothing else (no consumer group, no Lua, no
// dedup record). Awaited, each Publish sends its own XADD and waits for the
// reply, over a pool of connections. Pipelined, concurrent Publish calls
// are gathered into pipelines on one connection, at most two in flight,
// each Publish still returning only once its own XADD has been answered;
// with one publisher there is nothing to gather, so pipelining shows only
// with 16. It has no consumer, so it runs the publish scenarios only.
func RawXAdd(url string, pipelined bool) System {
	name, notes := "redis-raw-xadd-awaited", "go-redis, one awaited XADD per publish, connection pool"
	if pipelined {
		name, notes = "redis-raw-xadd-pipelined", "go-redis, concurrent publishes' XADDs gathered into pipelines (≤ 256 each, two in flight)"
	}
	return System{
		Name:  name,
		Group: "redis",
		Notes: notes,
		Open: func(ctx context.Context, _ string, _ int, _ HandleFunc) (Instance, error) {
			c, err := newRedisClient(ctx, url, 0)
			if err != nil {
				return nil, err
			}
			r := &rawXAdd{c: c, stream: newNamespace() + ":raw"}
			if pipelined {
				r.reqs = make(chan xaddReq)
				for range 2 {
					r.wg.Add(1)
					go r.pipeline()
				}
			}
			return r, nil
		},
	}
}

type rawXAdd struct {
	c      *goredis.Client
	stream string
	reqs   chan xaddReq // nil when awaited
	wg     sync.WaitGroup
}

type xaddReq struct {
	payload []byte
	done    chan error
}

func (r *rawXAdd) args(payload []byte) *goredis.XAddArgs {
	return &goredis.XAddArgs{Stream: r.stream, Values: []any{"data", payload}}
}

func (r *rawXAdd) Publish(ctx context.Context, payload []byte) error {
	if r.reqs == nil {
		return r.c.XAdd(ctx, r.args(payload)).Err()
	}
	req := xaddReq{payload: payload, done: make(chan error, 1)}
	select {
	case r.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-req.done
}

// pipeline takes one waiting publish, gathers whatever others are waiting
// too, and sends them as one pipeline.
func (r *rawXAdd) pipeline() {
	defer r.wg.Done()
	batch := make([]xaddReq, 0, pipelineMax)
	for first := range r.reqs {
		batch = append(batch[:0], first)
	gather:
		for len(batch) < pipelineMax {
			select {
			case req, ok := <-r.reqs:
				if !ok {
					break gather
				}
				batch = append(batch, req)
			default:
				break gather
			}
		}
		pipe := r.c.Pipeline()
		cmds := make([]*goredis.StringCmd, len(batch))
		for i, req := range batch {
			cmds[i] = pipe.XAdd(context.Background(), r.args(req.payload))
		}
		_, _ = pipe.Exec(context.Background())
		for i, req := range batch {
			req.done <- cmds[i].Err()
		}
	}
}

func (r *rawXAdd) Close() error {
	if r.reqs != nil {
		close(r.reqs)
		r.wg.Wait()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return errors.Join(r.c.Del(ctx, r.stream).Err(), r.c.Close())
}
