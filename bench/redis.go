package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// redisSystemNames lists the systems that need a Redis server, in report
// order.
var redisSystemNames = []string{
	"ripple-redis", "watermill-redis", "asynq", "bullmq",
	"redis-raw-xadd-awaited", "redis-raw-xadd-pipelined",
}

// RedisSystems returns the systems that talk to the Redis server at
// env.RedisURL, and a note for each one that cannot run here. All of them
// share the one server; each instance writes under its own fresh key
// namespace and deletes its keys when it closes, so runs do not accumulate.
func RedisSystems(env Env) ([]System, []string) {
	url := env.RedisURL
	out := []System{
		RippleSystem("ripple-redis", "redis transport, default settings",
			func(string) string { return withQuery(url, "prefix", newNamespace()) }),
		WatermillRedis(url),
		Asynq(url),
	}
	out[0].Group = "redis"
	out[0].Open = cleanupAfter(out[0].Open, url)
	var notes []string
	if s, err := BullMQ(url, env.InstallNode); err != nil {
		notes = append(notes, "bullmq was left out: "+err.Error())
	} else {
		out = append(out, s)
	}
	out = append(out, RawXAdd(url, false), RawXAdd(url, true))
	return out, notes
}

// newNamespace returns a fresh key prefix, bench-<random>, for one
// instance.
func newNamespace() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return "bench-" + hex.EncodeToString(b)
}

// withQuery adds one query parameter to a URL.
func withQuery(url, key, value string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + key + "=" + value
}

// prefixOf returns the prefix query parameter of a Ripple Redis URL.
func prefixOf(url string) string {
	_, q, _ := strings.Cut(url, "?")
	for _, kv := range strings.Split(q, "&") {
		if v, ok := strings.CutPrefix(kv, "prefix="); ok {
			return v
		}
	}
	return ""
}

// newRedisClient connects a go-redis client to url and checks that the
// server answers.
func newRedisClient(ctx context.Context, url string, poolSize int) (*goredis.Client, error) {
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis URL %q: %w", url, err)
	}
	if poolSize > 0 {
		opts.PoolSize = poolSize
	}
	c := goredis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis at %s does not answer PING: %w", opts.Addr, err)
	}
	return c, nil
}

// deleteKeys deletes every key matching pattern (a SCAN MATCH pattern).
func deleteKeys(ctx context.Context, c *goredis.Client, pattern string) error {
	iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Unlink(ctx, batch...).Err()
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}

// cleanupAfter wraps a Ripple system's Open so that closing the instance
// also deletes every key under its prefix.
func cleanupAfter(open func(context.Context, string, int, HandleFunc) (Instance, error), base string) func(context.Context, string, int, HandleFunc) (Instance, error) {
	return func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
		inst, err := open(ctx, dir, handlers, h)
		if err != nil {
			return nil, err
		}
		return &cleanupInstance{Instance: inst, base: base, prefix: prefixOf(inst.(rippleInstance).url)}, nil
	}
}

type cleanupInstance struct {
	Instance
	base, prefix string
}

func (c *cleanupInstance) Close() error {
	err := c.Instance.Close()
	if c.prefix == "" {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, cerr := newRedisClient(ctx, c.base, 0)
	if cerr != nil {
		return errors.Join(err, cerr)
	}
	defer cl.Close()
	return errors.Join(err, deleteKeys(ctx, cl, c.prefix+":*"))
}
